"""P1 and P2: the input pipeline, first epoch and later epochs, in images per second.

Owns: one pass of trainjob's input path (list the folder, ``job.data.decode``
into the memory cache with one decoder per core, then ``job.data.train_batches``
for two epochs, as ``job.train`` streams them) and one pass of the reference
(``keras.utils.image_dataset_from_directory`` on the same folder and size,
iterated twice), each timed epoch by epoch, in this process.
Never touches: the model, files other than the photo folder.

P1 times everything before the first epoch's last batch, listing and decoding
included; P2 times the second epoch alone. Keras decodes every epoch again (it
has no cache unless the user adds one), so its second epoch is its first.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

from bench.measure import alternate, timed
from bench.report import Figure, Target
from bench.sizes import Sizes
from job import data
from job.spec import DataSpec

P1_TARGET = Target(at_least=True, value=2.0)
P2_TARGET = Target(at_least=True, value=10.0)


@dataclass(frozen=True)
class TwoEpochs:
    """Images per second of one pass: the first epoch (from nothing) and the second."""

    first: float
    later: float


def measure(folder: Path, sizes: Sizes, *, log: Callable[[str], None]) -> list[Figure]:
    """P1 and P2 on the photo ``folder``, trainjob and Keras alternating."""
    ours, theirs = alternate(lambda: trainjob_pass(folder, sizes),
                             lambda: keras_pass(folder, sizes),
                             repetitions=sizes.repetitions, warmups=sizes.warmups, log=log,
                             label="P1/P2 input pipeline")
    height, width = sizes.decode_size
    where = {"images": sizes.photos, "photo_size": list(sizes.photo_size),
             "decoded_to": [height, width], "batch_size": sizes.batch_size}
    return [
        Figure.of("P1", title="Input pipeline, first epoch (list + decode + resize + batch)",
                  unit="images/s", reference_name="image_dataset_from_directory",
                  target=P1_TARGET, trainjob=[r.first for r in ours],
                  reference=[r.first for r in theirs], **where),
        Figure.of("P2", title="Input pipeline, later epochs", unit="images/s",
                  reference_name="the same Keras dataset, second epoch", target=P2_TARGET,
                  trainjob=[r.later for r in ours], reference=[r.later for r in theirs],
                  **where),
    ]


def trainjob_pass(folder: Path, sizes: Sizes) -> TwoEpochs:
    """trainjob's way: decode once into memory, then stream batches from the arrays."""
    spec = DataSpec(train_dir=folder, image_size=sizes.decode_size, cache="memory",
                    decode_workers=0)
    steps = data.steps_per_epoch(sizes.photos, sizes.batch_size)

    def first_epoch():
        items = data.list_images(folder, key="data.train_dir")
        decoded = data.decode(items, spec=spec, cache_dir=None, workers=spec.decode_workers)
        batches = iter(data.train_batches(decoded, batch_size=sizes.batch_size, start_batch=0,
                                          num_batches=2 * steps, seed=0, worker=0))
        return batches, _count(batches, steps)

    (batches, first_images), first_seconds = timed(first_epoch)
    later_images, later_seconds = timed(lambda: _count(batches, steps))
    return TwoEpochs(first_images / first_seconds, later_images / later_seconds)


def keras_pass(folder: Path, sizes: Sizes) -> TwoEpochs:
    """The reference: what the Keras guides write, iterated for two epochs."""
    import keras

    def first_epoch():
        dataset = keras.utils.image_dataset_from_directory(
            folder, image_size=sizes.decode_size, batch_size=sizes.batch_size, verbose=False)
        return dataset, _count(dataset, None)

    (dataset, first_images), first_seconds = timed(first_epoch)
    later_images, later_seconds = timed(lambda: _count(dataset, None))
    return TwoEpochs(first_images / first_seconds, later_images / later_seconds)


def _count(batches: Iterable, limit: int | None) -> int:
    """Images in the next ``limit`` batches (all of them for None), pulled to the host."""
    images = 0
    for number, (pixels, _labels) in enumerate(batches, start=1):
        images += int(pixels.shape[0])
        if number == limit:
            break
    return images
