"""P1 and P2: the input pipeline, first epoch and later epochs, in images per second.

Owns: one pass of trainjob's input path (list the folder, ``job.data.decode``
into the memory cache with one decoder per core, then ``job.pipeline.train_batches``
for two epochs, as ``job.train`` streams them) and one pass of the reference
(``keras.utils.image_dataset_from_directory`` on the same folder and size,
iterated twice), each timed epoch by epoch in a fresh process
(``python -m bench.pipeline SIDE FOLDER ...``) with TensorFlow already imported.
Never touches: the model, files other than the photo folder.

P1 times everything up to the first epoch's last batch, listing and decoding
included; P2 times the second epoch alone. Keras decodes every epoch again (it
has no cache unless the user adds one), so its second epoch is its first.

A third side in the same rounds measures how far any Pillow decoder could go
on these files, on one thread, then scaled by the cores as if parallelism were
perfect (no GIL, no start-up, no copies): decoding every photo at the DCT scale
the target needs (the smallest still at least the target size: 1/2 here) with
no resize, and at the smallest scale (1/8, 64x48, below the target), which is
little more than the entropy (Huffman) decoding that no JPEG decoder can skip.
P1 can never exceed the first over Keras's figure. Both are in P1's details.
The same side also runs the target-scale decode with one thread per core at
once, as trainjob's decoder runs (each thread taking the next photo, Pillow's
buffer pool on): the ceiling the cores give for real, where the threads share
the memory bus and the caches and the GIL between photos. P1's details give
its share of both ceilings.

Both trainjob's first epoch and the ceiling also count the CPU time they used
(every thread of the process). Where other programs share the cores, a process
gets less than the cores the ceiling multiplies by, and P1's share of the
ceiling in wall time falls with the load; its share in CPU time does not, and
it is what the wall share would be on idle cores if trainjob's threads kept
every core busy.
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from bench.measure import alternate, median, run_module, timed
from bench.report import Figure, Target, write_json
from bench.sizes import Sizes
from job.machine import available_cpus

P1_TARGET = Target(at_least=True, value=2.0)
P2_TARGET = Target(at_least=True, value=10.0)


@dataclass(frozen=True)
class TwoEpochs:
    """Images per second of one pass: the first epoch (from nothing) and the second."""

    first: float
    later: float
    first_cpu: float = 0.0
    """The first epoch's images per CPU-second, counting every thread of the process."""


@dataclass(frozen=True)
class Ceilings:
    """One thread's images per second decoding every photo and nothing else, at two scales."""

    target_scale: float
    """The smallest DCT scale still at least the target size (what trainjob decodes at)."""
    smallest_scale: float
    """1/8, below the target: little more than entropy decoding."""
    target_scale_cpu: float = 0.0
    """``target_scale`` per CPU-second rather than per second."""
    target_scale_together: float = 0.0
    """The target scale with one thread per core at once: images per second of them all."""


def measure(folder: Path, sizes: Sizes, *, work_dir: Path,
            log: Callable[[str], None]) -> list[Figure]:
    """P1 and P2 on the photo ``folder``, trainjob and Keras alternating."""
    counter = itertools.count(1)
    height, width = sizes.decode_size

    def side(name: str) -> Callable[[], dict]:
        def one_pass() -> dict:
            log_path = work_dir / "logs" / "pipeline" / f"{name}-{next(counter)}.log"
            return run_module("bench.pipeline",
                              [name, str(folder), "--height", str(height), "--width",
                               str(width), "--batch-size", str(sizes.batch_size)],
                              log=log_path, timeout_seconds=sizes.child_timeout_seconds)
        return one_pass

    runs = alternate({"trainjob": side("trainjob"), "keras": side("keras"),
                      "floor": side("floor")},
                     repetitions=sizes.repetitions, warmups=sizes.warmups, log=log,
                     label="P1/P2 input pipeline")
    ours = [TwoEpochs(**r) for r in runs["trainjob"]]
    theirs = [TwoEpochs(**r) for r in runs["keras"]]
    keras_first = median([r.first for r in theirs])
    cores = available_cpus()
    floors = {name: median([r[name] for r in runs["floor"]]) * cores
              for name in ("target_scale", "smallest_scale")}
    ceiling_cpu = median([r["target_scale_cpu"] for r in runs["floor"]])
    together = median([r["target_scale_together"] for r in runs["floor"]])
    where = {"images": sizes.photos, "photo_size": list(sizes.photo_size),
             "decoded_to": [height, width], "batch_size": sizes.batch_size}
    return [
        Figure.of("P1", title="Input pipeline, first epoch (list + decode + resize + batch)",
                  unit="images/s", reference_name="image_dataset_from_directory",
                  target=P1_TARGET, trainjob=[r.first for r in ours],
                  reference=[r.first for r in theirs], **where,
                  floor_method=(f"one thread x {cores} cores, Pillow decode only (no resize, "
                                "no batching)"),
                  floor_target_scale_images_per_second=floors["target_scale"],
                  floor_target_scale_ratio=floors["target_scale"] / keras_first,
                  floor_smallest_scale_images_per_second=floors["smallest_scale"],
                  floor_smallest_scale_ratio=floors["smallest_scale"] / keras_first,
                  share_of_ceiling=median([r.first for r in ours]) / floors["target_scale"],
                  share_of_ceiling_cpu=median([r.first_cpu for r in ours]) / ceiling_cpu,
                  floor_target_scale_together_method=(f"{cores} threads at once, each taking "
                                                      "the next photo"),
                  floor_target_scale_together_images_per_second=together,
                  share_of_ceiling_together=median([r.first for r in ours]) / together),
        Figure.of("P2", title="Input pipeline, later epochs", unit="images/s",
                  reference_name="the same Keras dataset, second epoch", target=P2_TARGET,
                  trainjob=[r.later for r in ours], reference=[r.later for r in theirs],
                  **where),
    ]


# --- in the child process ------------------------------------------------------------


def trainjob_pass(folder: Path, *, image_size: tuple[int, int], batch_size: int) -> TwoEpochs:
    """trainjob's way: decode once into memory, then stream batches from the arrays."""
    from job import data, pipeline
    from job.spec import DataSpec

    spec = DataSpec(train_dir=folder, image_size=image_size, cache="memory", decode_workers=0)

    def first_epoch():
        items = data.list_images(folder, key="data.train_dir")
        steps = data.steps_per_epoch(len(items), batch_size)
        decoded = data.decode(items, spec=spec, cache_dir=None, workers=spec.decode_workers)
        batches = iter(pipeline.train_batches(decoded, batch_size=batch_size, start_batch=0,
                                              num_batches=2 * steps, seed=0, worker=0))
        return batches, steps, _count(batches, steps)

    cpu_started = time.process_time()
    (batches, steps, first_images), first_seconds = timed(first_epoch)
    first_cpu = time.process_time() - cpu_started
    later_images, later_seconds = timed(lambda: _count(batches, steps))
    return TwoEpochs(first_images / first_seconds, later_images / later_seconds,
                     first_cpu=first_images / first_cpu)


def keras_pass(folder: Path, *, image_size: tuple[int, int], batch_size: int) -> TwoEpochs:
    """The reference: what the Keras guides write, iterated for two epochs."""
    import keras

    def first_epoch():
        dataset = keras.utils.image_dataset_from_directory(
            folder, image_size=image_size, batch_size=batch_size, verbose=False)
        return dataset, _count(dataset, None)

    (dataset, first_images), first_seconds = timed(first_epoch)
    later_images, later_seconds = timed(lambda: _count(dataset, None))
    return TwoEpochs(first_images / first_seconds, later_images / later_seconds)


def floor_pass(folder: Path, *, image_size: tuple[int, int], batch_size: int) -> Ceilings:
    """Every photo decoded with Pillow and nothing else: on one thread at the two
    ``Ceilings`` scales, then at the target scale on one thread per core at once."""
    from PIL import Image

    from job import data, images, rows

    paths = data.list_images(folder, key="data.train_dir").paths
    height, width = image_size

    def decode_all(draft_size: tuple[int, int], threads: int) -> None:
        """Every photo, on ``threads`` threads each taking the next (as ``job.rows`` runs
        trainjob's decoder)."""
        def decode_one(number: int) -> None:
            with Image.open(paths[number], formats=["JPEG"]) as image:
                image.draft("RGB", draft_size)
                image.load()
        rows.fill(len(paths), decode_one, threads=threads)

    def rates(draft_size: tuple[int, int], threads: int = 1) -> tuple[float, float]:
        """Images per second and per CPU-second."""
        cpu_started = time.process_time()
        seconds = timed(lambda: decode_all(draft_size, threads))[1]
        return len(paths) / seconds, len(paths) / (time.process_time() - cpu_started)

    target, target_cpu = rates((width, height))
    smallest = rates((1, 1))[0]
    cores = available_cpus()
    with images.reusing_image_memory(blocks=images.POOLED_BLOCKS_PER_THREAD * cores):
        together = rates((width, height), threads=cores)[0]  # as trainjob's decoder runs
    return Ceilings(target_scale=target, smallest_scale=smallest, target_scale_cpu=target_cpu,
                    target_scale_together=together)


def _count(batches: Iterable, limit: int | None) -> int:
    """Images in the next ``limit`` batches (all of them for None)."""
    images = 0
    for number, (pixels, _labels) in enumerate(batches, start=1):
        images += int(pixels.shape[0])
        if number == limit:
            break
    return images


def main(argv: Sequence[str] | None = None) -> int:
    """One pass of one side; writes its images/s to ``--result``: ``{"first", "later"}``
    epochs, or for the floor ``{"target_scale", "smallest_scale"}``."""
    parser = argparse.ArgumentParser(prog="python -m bench.pipeline")
    parser.add_argument("side", choices=("trainjob", "keras", "floor"))
    parser.add_argument("folder", type=Path)
    parser.add_argument("--height", type=int, required=True)
    parser.add_argument("--width", type=int, required=True)
    parser.add_argument("--batch-size", type=int, required=True)
    parser.add_argument("--result", type=Path, required=True)
    args = parser.parse_args(argv)
    import keras  # noqa: F401  Both sides start their clocks with TensorFlow loaded.

    one_pass = {"trainjob": trainjob_pass, "keras": keras_pass, "floor": floor_pass}[args.side]
    result = one_pass(args.folder, image_size=(args.height, args.width),
                      batch_size=args.batch_size)
    write_json(args.result, dataclasses.asdict(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
