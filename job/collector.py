"""Python's cycle collector while TensorFlow and Keras load, and after.

Owns: pausing the collector while a block imports TensorFlow (and Keras with it), then
moving every object that import left out of the collector's later passes (``gc.freeze``).
Never touches: what is imported (the caller's block), the collector's thresholds, a
process where TensorFlow is loaded already (nothing is paused or frozen there).

The import leaves about 370,000 objects that live as long as the process. CPython runs
a full collection each time its long-lived objects grow by a quarter, so the import ran
five, each longer than the last (20 to 150 ms), and they freed nothing; a sixth, during
the first epoch, took 170 ms to free two objects. Paused and then frozen, P4's run
reached the end of its first epoch 0.6 s sooner (ten paired runs). The
frozen objects are modules, classes and functions: nothing a run would free.
"""

from __future__ import annotations

import contextlib
import gc
import sys
from collections.abc import Iterator


@contextlib.contextmanager
def paused_for_import() -> Iterator[None]:
    """Run the block (which imports TensorFlow) without cycle collection, then freeze
    what it created out of later collections; a no-op once TensorFlow is loaded.

    Example:
        >>> with paused_for_import():                               # doctest: +SKIP
        ...     import tensorflow
    """
    if "tensorflow" in sys.modules:
        yield
        return
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        gc.freeze()
        if was_enabled:
            gc.enable()
