"""The cycle collector paused while TensorFlow loads, and what it loaded frozen after."""

from __future__ import annotations

import gc
import subprocess
import sys
import textwrap
import types

from job import collector

IMPORT_IN_A_FRESH_PROCESS = textwrap.dedent("""
    import gc, sys
    from job import collector
    full = []
    gc.callbacks.append(lambda phase, info: full.append(1)
                        if phase == "start" and info["generation"] == 2 else None)
    with collector.paused_for_import():
        import tensorflow
        inside = gc.isenabled()
    during = len(full)
    gc.collect()
    print(inside, gc.isenabled(), during, len(full) - during, gc.get_freeze_count())
""")


def test_tensorflow_loads_without_full_collections_and_stays_out_of_later_ones():
    # Measured without the pause: five full collections during the import.
    result = subprocess.run([sys.executable, "-c", IMPORT_IN_A_FRESH_PROCESS],
                            capture_output=True, text=True, timeout=300,
                            env={"TF_CPP_MIN_LOG_LEVEL": "3", "PATH": "/usr/bin:/bin"})

    assert result.returncode == 0, result.stderr[-2000:]
    inside, after, during, later, frozen = result.stdout.split()
    assert (inside, after, during, later) == ("False", "True", "0", "1")
    assert int(frozen) > 100_000  # TensorFlow's and Keras's objects, out of every pass


def test_nothing_is_paused_or_frozen_once_tensorflow_is_loaded(monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorflow", types.ModuleType("tensorflow"))
    frozen = gc.get_freeze_count()

    with collector.paused_for_import():
        assert gc.isenabled()

    assert gc.get_freeze_count() == frozen


def test_a_collector_the_caller_turned_off_stays_off(monkeypatch):
    monkeypatch.delitem(sys.modules, "tensorflow", raising=False)
    gc.disable()
    try:
        with collector.paused_for_import():
            pass
        assert not gc.isenabled()
    finally:
        gc.unfreeze()
        gc.enable()
