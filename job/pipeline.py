"""The ``tf.data`` input path: batches fed to the strategy, from a decoded shard.

Owns: the training stream (pass after pass over the shard, each a permutation that
is a pure function of seed, worker and pass, so a restart sees the same batches)
and the evaluation batches (fixed order, padded with weight-0 examples so every
worker runs the same number of collective steps), both gathered batch by batch
inside the ``tf.data`` graph from the decoded pixels, which the graph reads in
place, in memory or memory-mapped from the disk cache (``as_tensor``).
Never touches: decoding or the cache (``job.data``), the model, the strategy.

No Python runs per batch. A ``from_generator`` stream (Python fancy indexing
for each batch) cost the float32 training step 1.7 times the CPU time per image
on TensorFlow's own (Eigen) kernels, the ones most CPUs without VNNI or
bfloat16 get: 8.2 ms an image against ``model.fit``'s 4.7 ms, on the same ops
(BENCHMARKS.md, P3).

TensorFlow is imported at the top: only the training code imports this module.
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf

from job.data import TENSOR_ALIGNMENT, Decoded
from job.errors import DataError

SHUFFLE_ALGORITHM = "philox"
"""The permutations' random algorithm, named rather than 'auto_select', which may pick
another on another device: the stream must be the same on every machine."""


PREFETCH_BATCHES = 2
"""Batches each stream prepares ahead: a batch is one gather op, far quicker than a
step, so one in hand and one on the way keep the step fed."""


def _stream_options() -> tf.data.Options:
    """Every stream's options: tf.data's autotuning and its default static rewrites off.

    Autotuning runs a thread per iterator that sleeps between rounds, for up to 10 s
    once a stream has run a while, and destroying the iterator waits for that sleep to
    end: in one two-worker run in four to eight, a worker's end took 9-30 s longer
    (its peer gone meanwhile, its heartbeats to it failing). These streams have
    nothing to tune (no parallel map, a fixed prefetch), and without it the training
    stream gives 190,000-225,000 images/s of 128 px batches instead of
    225,000-305,000: still hundreds of times what a step takes.

    Each stream is also already what the default rewrites would make of it (a batch
    gathered in one op, then a prefetch), and rewriting it cost every iterator
    0.06-0.08 s at its creation, 0.025 s without: the training stream's, and again
    each validation's. In P1 that is 5% of the first epoch.
    """
    options = tf.data.Options()
    options.autotune.enabled = False
    options.experimental_optimization.apply_default_optimizations = False
    return options


def as_tensor(pixels: np.ndarray) -> tf.Tensor:
    """``pixels`` as a tensor over the same memory, without a copy, when it can be.

    A memory-mapped cache stays on disk, read page by page as batches are
    gathered. Through DLPack, which needs a C-contiguous, aligned and writable
    array (``job.data`` maps its caches copy-on-write, so nothing can write to
    the file); anything else is copied, which costs memory but is never wrong.
    """
    if (pixels.flags.c_contiguous and pixels.flags.writeable and pixels.size
            and pixels.ctypes.data % TENSOR_ALIGNMENT == 0):
        return tf.experimental.dlpack.from_dlpack(pixels.__dlpack__())
    return tf.convert_to_tensor(pixels)


def train_batches(decoded: Decoded, *, batch_size: int, start_batch: int, num_batches: int,
                  seed: int, worker: int):
    """Batches ``start_batch .. start_batch + num_batches`` of this worker's endless stream.

    The stream is pass after pass over the shard, each pass a fresh permutation
    drawn from (seed, worker, pass). It is a pure function of the batch number,
    so a restart at any step sees exactly the batches it would have seen.
    """
    size = len(decoded.labels)
    if size == 0:
        raise DataError("this worker's training shard has no readable images; add images or "
                        "use fewer workers.")
    pixels, labels = as_tensor(decoded.pixels), tf.constant(decoded.labels, tf.int32)
    first_pass, offset = divmod(start_batch * batch_size, size)
    passes = -(-(offset + num_batches * batch_size) // size)

    @_as_is
    def permutation(pass_number):
        key = tf.stack([tf.constant(seed, tf.int64),
                        tf.constant(worker, tf.int64) * 2**32 + pass_number])
        return tf.random.experimental.stateless_shuffle(tf.range(size, dtype=tf.int64), key,
                                                        alg=SHUFFLE_ALGORITHM)

    indices = (tf.data.Dataset.range(first_pass, first_pass + passes).map(permutation)
               .unbatch().skip(offset).batch(batch_size, drop_remainder=True)
               .take(num_batches))
    @_as_is
    def gather(rows):
        return tf.gather(pixels, rows), tf.gather(labels, rows)

    return indices.map(gather).prefetch(PREFETCH_BATCHES).with_options(_stream_options())


def eval_batches(decoded: Decoded, *, batch_size: int, num_batches: int):
    """Fixed-order batches, read from the cache in place, padded to ``num_batches`` with weight 0.

    Every worker must run the same number of evaluation steps (each is a
    collective), whatever the size of its shard; padding carries weight 0 so it
    never counts. Each batch is gathered from ``decoded.pixels`` on its own, so
    a memory-mapped disk cache is read as it goes and never copied whole.
    """
    count = len(decoded.labels)
    shape = decoded.pixels.shape[1:]
    if count == 0:
        empty = (tf.zeros((batch_size, *shape), tf.uint8), tf.zeros((batch_size,), tf.int32),
                 tf.zeros((batch_size,), tf.float32))
        return (tf.data.Dataset.from_tensors(empty).repeat(num_batches)
                .with_options(_stream_options()))
    pixels, labels = as_tensor(decoded.pixels), tf.constant(decoded.labels, tf.int32)

    @_as_is
    def batch(number):
        rows = number * batch_size + tf.range(batch_size, dtype=tf.int64)
        real = rows < count
        rows = tf.minimum(rows, count - 1)  # Padding repeats the last image, at weight 0.
        return (tf.gather(pixels, rows), tf.where(real, tf.gather(labels, rows), 0),
                tf.cast(real, tf.float32))

    return (tf.data.Dataset.range(num_batches).map(batch).prefetch(PREFETCH_BATCHES)
            .with_options(_stream_options()))


def _as_is(function):
    """A ``Dataset.map`` function traced without AutoGraph's rewriting of its source.

    These functions have no Python control flow to convert, and converting them
    parses their source first: it cost the first batch, and with it P1, time.
    """
    return tf.autograph.experimental.do_not_convert(function)
