"""The benchmark suite: trainjob measured side by side with plain Keras on the same data.

``python -m bench`` (``make bench``) generates its data under ``bench/work/``,
measures every figure of BENCHMARKS.md against its reference in the same run,
writes ``bench/results.json`` and prints a markdown table. ``--quick`` runs the
same code on tiny sizes with one repetition, so CI keeps the suite working; its
numbers mean nothing.

Modules, one concern each:

* ``sizes``: how much data, how many epochs and repetitions (full and quick).
* ``budget``: the warm-up's calibration, and the rounds each group runs so the suite
  fits its time budget on this machine.
* ``datasets``: generating and caching the photo set and the sample shapes.
* ``specs``: the one trainjob spec every training figure shares.
* ``measure``: repetitions, medians, and fresh child processes (through ``child``,
  which measures a child's wall time and peak RSS).
* ``pipeline``: P1 and P2, the input pipeline against ``image_dataset_from_directory``.
* ``step``: P3 and P6, training-step throughput against ``model.fit``, FLOPs, matmul peak.
* ``end_to_end``: P4, M1 and P5, whole runs of ``trainjob train`` and ``trainjob local``.
* ``plain_keras``: the reference script of P4 and M1.
* ``demo``: D1, the demo's wall time on a fresh folder, as ``make demo`` runs it.
* ``machine``: versions, CPUs, and how busy other work kept them.
* ``report``: figures, targets, results.json and the table.
* ``suite``: the command line and the order of a run.

Every measurement runs in a fresh process (see ``measure``); the suite process
itself never imports TensorFlow. The suite never edits ``job/``; it calls it as
a user would.
"""
