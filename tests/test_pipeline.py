"""The tf.data input path: training batches as a pure function of the step, and
evaluation batches streamed from the cache."""

from __future__ import annotations

import tracemalloc

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from job import data, pipeline
from job.errors import DataError


def numbered(count: int) -> data.Decoded:
    """``count`` one-pixel images whose value is their index, labelled with that index."""
    pixels = np.arange(count, dtype=np.uint8).reshape(count, 1, 1, 1)
    return data.Decoded(pixels=pixels, labels=np.arange(count, dtype=np.int32))


def drawn(dataset) -> np.ndarray:
    """The labels of every batch, one row per batch; checks pixels travel with labels."""
    rows = []
    for pixels, labels in dataset:
        assert np.array_equal(pixels.numpy().reshape(-1), labels.numpy())
        rows.append(labels.numpy())
    return np.array(rows)


def stream(decoded, *, start=0, count=12, seed=1, worker=0, batch_size=4) -> np.ndarray:
    return drawn(pipeline.train_batches(decoded, batch_size=batch_size, start_batch=start,
                                    num_batches=count, seed=seed, worker=worker))


def test_train_batches_are_a_function_of_seed_and_worker():
    decoded = numbered(10)

    first = stream(decoded)

    assert first.shape == (12, 4)
    assert np.array_equal(stream(decoded), first)
    assert not np.array_equal(stream(decoded, worker=1), first)
    assert not np.array_equal(stream(decoded, seed=2), first)


@pytest.mark.parametrize("start", [1, 2, 5, 11])
def test_batches_started_at_batch_k_are_the_tail_of_the_stream_from_zero(start):
    """What makes resume exact: a restart at step k sees the batches k, k+1, ... of the run."""
    decoded = numbered(10)  # 10 images in batches of 4: passes end inside batches.

    whole = stream(decoded, count=12)
    tail = stream(decoded, start=start, count=12 - start)

    assert np.array_equal(tail, whole[start:])


def test_every_image_appears_once_per_pass_in_a_fresh_order():
    decoded = numbered(10)

    passes = stream(decoded, count=10).reshape(-1)[:40].reshape(4, 10)

    for order in passes:
        assert sorted(order.tolist()) == list(range(10))
    assert len({tuple(order) for order in passes}) == 4


def test_a_worker_without_readable_training_images_is_a_data_error():
    with pytest.raises(DataError, match="no readable images"):
        pipeline.train_batches(numbered(0), batch_size=4, start_batch=0, num_batches=1, seed=1,
                           worker=0)


def test_eval_batches_keep_order_and_pad_with_weight_zero():
    decoded = numbered(5)

    batches = list(pipeline.eval_batches(decoded, batch_size=4, num_batches=3))

    assert len(batches) == 3
    pixels = np.concatenate([b[0].numpy() for b in batches]).reshape(-1)
    labels = np.concatenate([b[1].numpy() for b in batches])
    weights = np.concatenate([b[2].numpy() for b in batches])
    assert labels[:5].tolist() == pixels[:5].tolist() == [0, 1, 2, 3, 4]
    assert weights.tolist() == [1.0] * 5 + [0.0] * 7


def test_eval_batches_stream_from_a_memory_mapped_cache_without_copying_it(tmp_path):
    """Evaluation must not grow with the dataset: the shard is cut batch by batch."""
    path = tmp_path / "shard.npy"
    pixels = np.lib.format.open_memmap(path, mode="w+", dtype=np.uint8,
                                       shape=(4000, 32, 32, 3))
    pixels[:] = 7
    pixels.flush()
    decoded = data.Decoded(pixels=np.load(path, mmap_mode="c"),  # as job.data maps it
                           labels=np.zeros(4000, dtype=np.int32))
    shard_bytes = 4000 * 32 * 32 * 3

    tracemalloc.start()
    try:
        batches = iter(pipeline.eval_batches(decoded, batch_size=32, num_batches=125))
        first = next(batches)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()

    assert first[0].shape == (32, 32, 32, 3) and int(first[0].numpy().max()) == 7
    assert peak < shard_bytes / 4, f"{peak} bytes allocated for a {shard_bytes}-byte shard"


def graph_ops(dataset) -> set[str]:
    """Every op type in a dataset's graph, its functions' bodies included."""
    graph = tf.compat.v1.GraphDef.FromString(dataset._as_serialized_graph().numpy())
    ops = {node.op for node in graph.node}
    for function in graph.library.function:
        ops.update(node.op for node in function.node_def)
    return ops


def test_no_python_runs_per_batch():
    """A Python generator per batch cost the float32 step 1.7 times the CPU per image."""
    decoded = numbered(10)

    for dataset in (pipeline.train_batches(decoded, batch_size=4, start_batch=0, num_batches=3,
                                           seed=1, worker=0),
                    pipeline.eval_batches(decoded, batch_size=4, num_batches=3)):
        ops = graph_ops(dataset)
        assert "GatherV2" in ops
        assert not ops & {"PyFunc", "EagerPyFunc", "PyFuncStateless", "GeneratorDataset"}


def address(tensor) -> int:
    """Where a CPU tensor's buffer starts."""
    class Capsule:
        def __dlpack__(self, **_):
            return tf.experimental.dlpack.to_dlpack(tensor)

        def __dlpack_device__(self):
            return (1, 0)  # kDLCPU

    return np.from_dlpack(Capsule()).ctypes.data


@pytest.mark.parametrize("cache", ["memory", "disk"])
def test_the_decoded_shard_is_read_in_place_not_copied(tmp_path, cache):
    """The training input reads the decoder's own array: a copy would double its memory."""
    for label in ("a", "b"):
        folder = tmp_path / "train" / label
        folder.mkdir(parents=True)
        for i in range(5):
            Image.new("RGB", (20, 12), (i * 40, 9, 200)).save(folder / f"{i}.png")
    spec = data.DataSpec(train_dir=tmp_path / "train", image_size=(8, 8), cache=cache)
    splits = data.make_splits(spec, seed=1)

    decoded = data.decode(splits.train, spec=spec, cache_dir=tmp_path / "cache")

    assert isinstance(decoded.pixels, np.memmap) == (cache == "disk")
    tensor = pipeline.as_tensor(decoded.pixels)
    assert address(tensor) == decoded.pixels.ctypes.data
    first = next(iter(pipeline.train_batches(decoded, batch_size=2, start_batch=0,
                                             num_batches=1, seed=1, worker=0)))
    rows = [np.flatnonzero((decoded.pixels == image).all(axis=(1, 2, 3)))
            for image in first[0].numpy()]
    assert all(len(found) for found in rows)


@pytest.mark.parametrize("make", [
    lambda: pipeline.train_batches(numbered(8), batch_size=4, start_batch=0, num_batches=3,
                                   seed=1, worker=0),
    lambda: pipeline.eval_batches(numbered(5), batch_size=4, num_batches=3),
    lambda: pipeline.eval_batches(numbered(0), batch_size=4, num_batches=2),
], ids=["train", "eval", "empty eval shard"])
def test_no_stream_starts_tf_data_s_autotuning_thread(make):
    # Destroying an iterator waits out that thread's sleep, up to 10 s: a two-worker run
    # sometimes ended that much later. Each stream prefetches a fixed number instead.
    dataset = make()
    assert dataset.options().autotune.enabled is False
