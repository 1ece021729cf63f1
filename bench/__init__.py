"""The benchmark suite: trainjob measured side by side with plain Keras on the same data.

``python -m bench`` (``make bench``) generates its data under ``bench/work/``,
measures every figure of BENCHMARKS.md against its reference in the same run,
writes ``bench/results.json`` and prints a markdown table. ``--quick`` runs the
same code on tiny sizes with one repetition, so CI keeps the suite working; its
numbers mean nothing.

Modules, one concern each:

* ``sizes``: how much data, how many epochs and repetitions (full and quick).
* ``datasets``: generating and caching the photo set and the sample shapes.
* ``measure``: repetitions, medians, child processes with wall time and peak RSS.
* ``pipeline``: P1 and P2, the input pipeline against ``image_dataset_from_directory``.
* ``step``: P3 and P6, training-step throughput against ``model.fit``, FLOPs, matmul peak.
* ``end_to_end``: P4, M1 and P5, whole runs in fresh processes.
* ``plain_keras``: the reference script of P4 and M1.
* ``report``: figures, targets, the environment, results.json and the table.
* ``suite``: the command line and the order of a run.

The suite never edits ``job/``; it calls it as a user would.
"""
