"""The ``tf.data`` input path: batches fed to the strategy, from a decoded shard.

Owns: the training stream (pass after pass over the shard, each a permutation that
is a pure function of seed, worker and pass, so a restart sees the same batches)
and the evaluation batches (fixed order, padded with weight-0 examples so every
worker runs the same number of collective steps), both cut batch by batch from the
decoded pixels, in memory or memory-mapped from the disk cache.
Never touches: decoding or the cache (``job.data``), the model, the strategy.

TensorFlow is imported at the top: only the training code imports this module.
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf

from job.data import Decoded
from job.errors import DataError


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
    pixels, labels = decoded.pixels, decoded.labels

    orders: dict[int, np.ndarray] = {}

    def order(pass_number: int) -> np.ndarray:
        if pass_number not in orders:
            orders.clear()  # Only the current pass (and the next) is ever needed.
            orders[pass_number] = np.random.default_rng([seed, worker, pass_number]).permutation(
                size)
        return orders[pass_number]

    def generate(start, count):
        for batch in range(int(start), int(start) + int(count)):
            positions = np.arange(batch * batch_size, (batch + 1) * batch_size)
            passes, offsets = np.divmod(positions, size)
            indices = np.empty(batch_size, dtype=np.int64)
            for pass_number in np.unique(passes):
                mask = passes == pass_number
                indices[mask] = order(int(pass_number))[offsets[mask]]
            yield pixels[indices], labels[indices]

    shape = (batch_size, *pixels.shape[1:])
    dataset = tf.data.Dataset.from_generator(
        generate, args=(start_batch, num_batches),
        output_signature=(tf.TensorSpec(shape, tf.uint8), tf.TensorSpec((batch_size,), tf.int32)))
    return dataset.prefetch(tf.data.AUTOTUNE)


def eval_batches(decoded: Decoded, *, batch_size: int, num_batches: int):
    """Fixed-order batches, streamed from the cache, padded to ``num_batches`` with weight 0.

    Every worker must run the same number of evaluation steps (each is a
    collective), whatever the size of its shard; padding carries weight 0 so it
    never counts. Batches are cut from ``decoded.pixels`` one at a time, so a
    memory-mapped disk cache is read as it goes and never copied whole.
    """
    count = len(decoded.labels)
    shape = decoded.pixels.shape[1:]

    def generate():
        for start in range(0, num_batches * batch_size, batch_size):
            real = max(0, min(batch_size, count - start))
            pixels = np.zeros((batch_size, *shape), dtype=np.uint8)
            labels = np.zeros((batch_size,), dtype=np.int32)
            weights = np.zeros((batch_size,), dtype=np.float32)
            pixels[:real] = decoded.pixels[start:start + real]
            labels[:real] = decoded.labels[start:start + real]
            weights[:real] = 1.0
            yield pixels, labels, weights

    dataset = tf.data.Dataset.from_generator(generate, output_signature=(
        tf.TensorSpec((batch_size, *shape), tf.uint8), tf.TensorSpec((batch_size,), tf.int32),
        tf.TensorSpec((batch_size,), tf.float32)))
    return dataset.prefetch(tf.data.AUTOTUNE)
