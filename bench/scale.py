"""M2: does a run's memory grow with its dataset? Peak RSS at 8 times the memory cache.

Owns: the two datasets of M2 and their runs. Both sides are ``python -m job train
SPEC`` for one epoch in a fresh process, with the same model (the spec's default
small CNN), batch, image size and ``data.cache_memory_mb`` (small: ``sizes.scale_cache_mb``):

* trainjob side, the large run: sample shapes whose decoded pixels are
  ``SCALE_FACTOR`` times ``cache_memory_mb``. Both its shards (training and
  validation) are over the limit, so both go to the memory-mapped disk cache, and
  evaluation streams from it.
* reference side, the same run on a dataset whose decoded pixels fit in the cache,
  so both shards stay in memory.

With the suite's ``--precision float32`` both runs train with
``train.mixed_precision: false``.

The figure is large / small peak RSS (from ``bench/child.py``, as M1). Each large
run gets an empty cache folder, so every run decodes, as a first run does; a run
that did not use the disk cache (or a small one that did) fails the figure rather
than measuring the wrong thing.
Never touches: trainjob's internals; the runs are started as a user starts them.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable
from pathlib import Path

from bench.end_to_end import Run, Runner
from bench.measure import BenchmarkFailed, alternate, fresh_dir
from bench.report import Figure, Target
from bench.sizes import Sizes
from bench.specs import mixed_precision_setting, training_spec, write_spec
from job import sample_data

M2_TARGET = Target(at_least=False, value=1.3)
SCALE_FACTOR = 8
"""Decoded data of the large run, in multiples of data.cache_memory_mb: the issue's figure."""
SCALE_SEED = 2
"""Drawing seed of M2's shapes; any fixed value makes them reproducible."""
MIB = 2**20
CHANNELS = 3
"""RGB, the spec's default color_mode."""


def images_per_class(*, cache_mb: int, image_size: int, factor: float, classes: int,
                     fit: bool) -> int:
    """Images per class whose decoded pixels reach ``factor`` x ``cache_mb`` MiB (pure).

    ``fit=False``: the fewest that reach it (the large run); ``fit=True``: the most
    that stay within it (the run that fits).

    Example:
        >>> images_per_class(cache_mb=2, image_size=64, factor=8, classes=4, fit=False)
        342
        >>> images_per_class(cache_mb=2, image_size=64, factor=1, classes=4, fit=True)
        42
    """
    per_class_bytes = factor * cache_mb * MIB / (image_size * image_size * CHANNELS * classes)
    return math.floor(per_class_bytes) if fit else math.ceil(per_class_bytes)


def measure(sizes: Sizes, *, work_dir: Path, log: Callable[[str], None],
            precision: str = "auto") -> list[Figure]:
    """M2 from ``warmups + scale_repetitions`` rounds of the large run and the one that fits.

    ``precision``: the suite's ``--precision`` (``bench.specs.PRECISIONS``).
    """
    runners = {name: _runner(name, sizes, work_dir=work_dir, log=log,
                             mixed_precision=mixed_precision_setting(precision))
               for name in ("large", "fits")}
    runs = alternate({f"{SCALE_FACTOR}x the cache": lambda: _run(runners["large"], disk=True),
                      "fits in the cache": lambda: _run(runners["fits"], disk=False)},
                     repetitions=sizes.scale_repetitions, warmups=sizes.warmups, log=log,
                     label="M2 scale")
    large, fits = runs[f"{SCALE_FACTOR}x the cache"], runs["fits in the cache"]
    return [_figure(large, fits, sizes)]


def _runner(name: str, sizes: Sizes, *, work_dir: Path, log: Callable[[str], None],
            mixed_precision: bool | None) -> Runner:
    """A Runner training one epoch on M2's ``name`` dataset, its cache in its own folder."""
    side = sizes.scale_image_size
    per_class = images_per_class(cache_mb=sizes.scale_cache_mb, image_size=side,
                                 factor=SCALE_FACTOR if name == "large" else 1,
                                 classes=len(sample_data.CLASSES), fit=name == "fits")
    log(f"M2 {name}: {per_class} shapes per class at {side} px")
    root = sample_data.generate(work_dir / f"scale-{per_class}-{side}px",
                                images_per_class=per_class, test_per_class=0,
                                image_size=side, seed=SCALE_SEED)
    runs_dir = fresh_dir(work_dir / "runs" / f"scale-{name}")
    spec = training_spec(root / "train", sizes, epochs=1, output_dir=runs_dir,
                         name=f"bench-scale-{name}", image_size=side,
                         mixed_precision=mixed_precision)
    spec["data"].update(cache="auto", cache_memory_mb=sizes.scale_cache_mb,
                        cache_dir=str(runs_dir / "cache"))
    spec_path = write_spec(work_dir / "specs" / f"scale-{name}.yaml", spec)
    counter = itertools.count(1)
    return Runner(root / "train", sizes, spec_path, runs_dir,
                  logs_dir=work_dir / "logs" / "scale",
                  names=lambda _kind: f"{name}-{next(counter)}")


def _run(runner: Runner, *, disk: bool) -> Run:
    """One run from an empty cache folder; checks it used the disk cache iff ``disk``."""
    cache = fresh_dir(runner.runs_dir / "cache")
    run = runner.trainjob()
    cached = sorted(path.name for path in cache.rglob("*.npy"))
    # Training and validation shards are cached apart: the large run writes both.
    if len(cached) != (2 if disk else 0):
        raise BenchmarkFailed(
            f"M2: {runner.spec_path.name} wrote {len(cached)} disk cache files to {cache} "
            f"(expected {2 if disk else 0}): the dataset does not sit where the figure "
            "needs it against data.cache_memory_mb; check bench/scale.py's sizes.")
    return run


def _figure(large: list[Run], fits: list[Run], sizes: Sizes) -> Figure:
    side = sizes.scale_image_size
    image_bytes = side * side * CHANNELS
    counts = {name: images_per_class(cache_mb=sizes.scale_cache_mb, image_size=side,
                                     factor=SCALE_FACTOR if name == "large" else 1,
                                     classes=len(sample_data.CLASSES), fit=name == "fits")
              * len(sample_data.CLASSES) for name in ("large", "fits")}
    decoded = {name: count * image_bytes / MIB for name, count in counts.items()}
    rounds = [a.peak_rss_mib / b.peak_rss_mib for a, b in zip(large, fits)]
    extra = [a.peak_rss_mib - b.peak_rss_mib for a, b in zip(large, fits)]
    note = (f"M2's rounds: {', '.join(f'{r:.2f}x' for r in rounds)}; the large run held "
            f"{', '.join(f'{e:+.0f}' for e in extra)} MiB for "
            f"{decoded['large'] - decoded['fits']:.1f} MiB more decoded pixels "
            f"(data.cache_memory_mb: {sizes.scale_cache_mb}).")
    return Figure.of(
        "M2", title=f"Peak RSS, one epoch on {SCALE_FACTOR}x data.cache_memory_mb",
        unit="MiB", reference_name="the same run on data that fits in the cache",
        target=M2_TARGET, trainjob=[r.peak_rss_mib for r in large],
        reference=[r.peak_rss_mib for r in fits], note=note,
        precision=large[0].precision, cache_memory_mb=sizes.scale_cache_mb, images=counts,
        decoded_mib=decoded,
        round_ratios=rounds, extra_mib=extra, image_size=side,
        batch_size=sizes.batch_size, epochs=1)
