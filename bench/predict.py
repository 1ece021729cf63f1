"""P7: prediction throughput over a folder of photos, in images per second.

Owns: a run directory to predict with (a ``small_cnn`` built by ``job.model`` at the
photo figures' decode size, saved as a run writes it: ``model.h5``, ``labels.json``,
``spec.yaml``; untrained, since throughput does not depend on the weights), and one
pass of each side, each in a fresh process (``python -m bench.predict SIDE ...``)
with TensorFlow already imported when its clock starts:

* trainjob: ``job.predict.predict`` on the run directory and the photo folder, as
  ``trainjob predict RUN FOLDER --output rows.csv`` runs it: load the model, list the
  folder, decode with the training decoder in threads, predict chunk by chunk, write
  one CSV row per photo with the top 3 classes.
* the reference, what a user writes: ``keras.saving.load_model``, then
  ``keras.utils.image_dataset_from_directory(shuffle=False)`` on the same folder at
  the same size, then ``model.predict`` over it.

Never touches: training, the photo set itself (``bench.datasets``).
"""

from __future__ import annotations

import argparse
import itertools
from collections.abc import Callable, Sequence
from pathlib import Path

from bench.measure import alternate, run_module, timed
from bench.report import Figure, Target, write_json
from bench.sizes import Sizes

P7_TARGET = Target(at_least=True, value=1.0)
TOP_K = 3
"""Classes per row on trainjob's side: the command's default."""
CLASSES = ("circle", "square", "star", "triangle")
"""The photo set's class folders (the sample shapes), so a run's labels match them."""


def measure(folder: Path, sizes: Sizes, *, work_dir: Path,
            log: Callable[[str], None]) -> list[Figure]:
    """P7 on the photo ``folder``, trainjob and Keras alternating."""
    height, width = sizes.decode_size
    logs = work_dir / "logs" / "predict"
    run_dir = work_dir / "predict-run"
    log(f"P7: a small_cnn run to predict with, {height}x{width}")
    made = run_module("bench.predict", ["model", str(run_dir), str(folder), "--height", str(height),
                                 "--width", str(width)],
               log=logs / "model.log", timeout_seconds=sizes.child_timeout_seconds)
    counter = itertools.count(1)

    def side(name: str) -> Callable[[], dict]:
        def one_pass() -> dict:
            number = next(counter)
            return run_module("bench.predict",
                              [name, str(run_dir), str(folder), "--height", str(height),
                               "--width", str(width), "--batch-size", str(sizes.batch_size),
                               "--rows", str(work_dir / "predict-rows.csv")],
                              log=logs / f"{name}-{number}.log",
                              timeout_seconds=sizes.child_timeout_seconds)
        return one_pass

    runs = alternate({"trainjob": side("trainjob"), "keras": side("keras")},
                     repetitions=sizes.predict_repetitions, warmups=sizes.warmups,
                     log=log, label="P7 predict")
    return [Figure.of(
        "P7", title="Predict a folder (load + list + decode + predict)", unit="images/s",
        reference_name="image_dataset_from_directory(shuffle=False) + model.predict",
        target=P7_TARGET, trainjob=[r["images_per_second"] for r in runs["trainjob"]],
        reference=[r["images_per_second"] for r in runs["keras"]],
        images=sizes.photos, photo_size=list(sizes.photo_size), decoded_to=[height, width],
        reference_batch_size=sizes.batch_size, top_k=TOP_K, model="small_cnn, untrained",
        precision=made["precision"])]


# --- in the child process ------------------------------------------------------------


def make_run(run_dir: Path, folder: Path, *, image_size: tuple[int, int]) -> str:
    """A run directory as ``trainjob train`` leaves it, around an untrained small_cnn.

    Returns:
        The model's dtype policy, what both sides predict in (Keras's float32 default:
        neither ``--precision`` nor the CPU changes it).
    """
    from job import spec as spec_module
    from job.model import build_model
    from job.run_dir import RunDir

    spec = spec_module.from_dict({"name": "bench-predict",
                                  "data": {"train_dir": str(folder),
                                           "image_size": list(image_size)}},
                                 base_dir=folder)
    model = build_model(input_shape=spec.data.image_shape, num_classes=len(CLASSES),
                        model=spec.model, seed=0)
    run = RunDir(shared=run_dir, root=run_dir, is_chief=True)
    run.create()
    run.save_model(model)
    run.write_json("labels.json", list(CLASSES))
    run.write_spec(spec.to_dict())
    return model.dtype_policy.name


def trainjob_pass(run_dir: Path, folder: Path, *, rows: Path) -> dict:
    """``trainjob predict RUN FOLDER --output rows.csv``, in this process."""
    import io

    from job import kernels

    kernels.apply()  # As `trainjob predict` does before TensorFlow loads: its kernel choice.
    from job import predict

    code, seconds = timed(lambda: predict.predict(run_dir, [folder], top_k=TOP_K, output=rows,
                                                  err=io.StringIO()))
    if code != 0:
        raise RuntimeError(f"trainjob predict exited {code}")
    images = sum(1 for _ in rows.open()) - 1
    return {"images_per_second": images / seconds, "images": images}


def keras_pass(run_dir: Path, folder: Path, *, image_size: tuple[int, int],
               batch_size: int) -> dict:
    """What the Keras guides write to predict a folder with a saved model."""
    import keras

    def run() -> int:
        model = keras.saving.load_model(run_dir / "model.h5", compile=False)
        dataset = keras.utils.image_dataset_from_directory(
            folder, labels=None, image_size=image_size, batch_size=batch_size, shuffle=False,
            verbose=False)
        return len(model.predict(dataset, verbose=0))

    images, seconds = timed(run)
    return {"images_per_second": images / seconds, "images": images}


def main(argv: Sequence[str] | None = None) -> int:
    """One pass of one side (or ``model``: make the run); writes ``--result`` JSON."""
    parser = argparse.ArgumentParser(prog="python -m bench.predict")
    parser.add_argument("side", choices=("model", "trainjob", "keras"))
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("folder", type=Path)
    parser.add_argument("--height", type=int, required=True)
    parser.add_argument("--width", type=int, required=True)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--rows", type=Path, default=None)
    parser.add_argument("--result", type=Path, required=True)
    args = parser.parse_args(argv)
    import keras  # noqa: F401  Both sides start their clocks with TensorFlow loaded.

    size = (args.height, args.width)
    if args.side == "model":
        policy = make_run(args.run_dir, args.folder, image_size=size)
        result: dict = {"run_dir": str(args.run_dir), "precision": policy}
    elif args.side == "trainjob":
        result = trainjob_pass(args.run_dir, args.folder, rows=args.rows)
    else:
        result = keras_pass(args.run_dir, args.folder, image_size=size,
                            batch_size=args.batch_size)
    write_json(args.result, result)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
