"""The benchmark suite keeps working: its smoke mode end to end, and the parts it trusts.

No test here looks at a timing: benchmark numbers are results, never asserts.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

from bench import scale, suite
from bench.measure import BenchmarkFailed, run_child
from bench.report import Figure, Target, results, table
from bench.sizes import FULL, QUICK
from bench.specs import VAL_SPLIT
from job import demo, sample_data

ROOT = Path(__file__).resolve().parent.parent
MIB = 2**20


@pytest.mark.slow
def test_quick_run_reports_every_figure_with_numbers_and_versions(tmp_path):
    out = tmp_path / "results.json"
    completed = subprocess.run(
        [sys.executable, "-m", "bench", "--quick", "--out", str(out),
         "--work-dir", str(tmp_path / "work")],
        cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert completed.returncode == 0, completed.stderr[-3000:]

    document = json.loads(out.read_text())
    assert document["mode"] == "quick"
    figures = {row["id"]: row for row in document["figures"]}
    assert list(figures) == list(suite.ORDER)
    for row in figures.values():
        for key in ("trainjob", "reference", "ratio"):
            assert isinstance(row[key], float) and math.isfinite(row[key]), (row["id"], key)
        assert row["trainjob_samples"] and row["reference_samples"], row["id"]
        assert isinstance(row["passed"], bool)
        assert f"| {row['id']} |" in completed.stdout
    for key in ("trainjob_val_accuracy", "reference_val_accuracy"):
        assert 0.0 <= figures["P4"]["details"][key] <= 1.0
    scale_run = figures["M2"]["details"]
    assert scale_run["decoded_mib"]["large"] >= 8 * scale_run["cache_memory_mb"]
    assert scale_run["decoded_mib"]["fits"] <= scale_run["cache_memory_mb"]
    demo_run = figures["D1"]["details"]
    assert demo_run["native_epochs"][0] >= demo.MIN_EPOCHS
    assert demo_run["native_estimate_seconds"][0] > 0
    assert 0.0 <= demo_run["native_test_accuracy"][0] <= 1.0
    assert f"* D1: in {demo_run['native_precision']}: " in completed.stdout
    env = document["environment"]
    for package in ("tensorflow", "keras", "pillow"):
        assert isinstance(env[package], str) and env[package][0].isdigit(), package
    assert env["cpu_count"] >= 1 and env["cpus_available"] >= 1


def test_child_peak_rss_is_its_own_not_its_parents_or_an_earlier_childs(tmp_path):
    ballast = b"x" * (400 * MIB)  # This process is now bigger than any child below.

    def peak(code: str, name: str) -> int:
        child = run_child([sys.executable, "-c", code], env={}, cwd=tmp_path,
                          log=tmp_path / f"{name}.log", timeout_seconds=60)
        return child.peak_rss_bytes

    big = peak("b = b'x' * (200 * 2**20)", "big")
    small = peak("pass", "small")
    assert 200 * MIB < big < 400 * MIB
    assert small < 100 * MIB
    del ballast


def test_failed_child_names_its_exit_code_and_log_tail(tmp_path):
    with pytest.raises(BenchmarkFailed, match=r"(?s)exited with 3 .*boom"):
        run_child([sys.executable, "-c", "import sys; print('boom'); sys.exit(3)"], env={},
                  cwd=tmp_path, log=tmp_path / "fail.log", timeout_seconds=60)


def test_child_over_its_time_limit_is_stopped_and_reported(tmp_path):
    with pytest.raises(BenchmarkFailed, match="did not finish within 1s"):
        run_child([sys.executable, "-c", "import time; time.sleep(120)"], env={}, cwd=tmp_path,
                  log=tmp_path / "slow.log", timeout_seconds=1)


def test_table_marks_a_missed_target_and_shows_medians():
    faster = Figure.of("P1", title="first epoch", unit="images/s", reference_name="keras",
                       target=Target(at_least=True, value=2.0), trainjob=[300, 100, 200],
                       reference=[100, 100, 100])
    slower = Figure.of("P4", title="end to end", unit="s", reference_name="keras",
                       target=Target(at_least=False, value=0.7), trainjob=[9.0],
                       reference=[10.0])
    document = results([faster, slower], mode="full",
                       environment={"tensorflow": "2", "keras": "3", "pillow": "1", "numpy": "2",
                                    "python": "3", "cpu_count": 2, "cpus_available": 2},
                       sizes={}, seconds=1.0, others_cpu_share=0.5)
    rows = table(document).splitlines()
    assert rows[2].startswith("| P1 |") and "| 200 images/s |" in rows[2]
    assert "| 2.00x | ≥ 2.00x | yes |" in rows[2]
    assert "| 0.90x | ≤ 0.70x | **no** |" in rows[3]
    assert "other processes used 50% of the CPU time" in table(document)


def test_table_prints_each_figures_note_under_the_machine_line():
    figure = Figure.of("D1", title="demo", unit="s", reference_name="budget",
                       target=Target(at_least=False, value=1.0), trainjob=[40.0],
                       reference=[120.0], note="float32 path: 50 s")
    document = results([figure], mode="full",
                       environment={"tensorflow": "2", "keras": "3", "pillow": "1", "numpy": "2",
                                    "python": "3", "cpu_count": 2, "cpus_available": 2},
                       sizes={}, seconds=1.0, others_cpu_share=0.0)

    lines = table(document).splitlines()

    assert lines[2].startswith("| D1 |") and "| 0.33x | ≤ 1.00x | yes |" in lines[2]
    assert lines[-1] == "* D1: float32 path: 50 s"
    assert lines[-3].startswith("full run of")


def test_the_float32_side_hides_bfloat16_from_trainjob_alone(tmp_path):
    """Through the D1 float32 side's namespace, trainjob's own choice on auto is float32."""
    from bench.demo import float32_namespace
    from job import machine
    from job.precision import CPU_BF16_FLAGS

    prefix, why_not = float32_namespace(tmp_path)

    if not CPU_BF16_FLAGS & machine.cpu_flags():
        assert (prefix, why_not) == (None, None)  # Nothing to hide: the demo is float32 here.
        return
    if prefix is None:
        pytest.skip(f"no float32 side on this machine: {why_not}")
    choice = ("from job import machine, precision; print(precision.choose('auto', "
              "gpu_capabilities=[], cpu_flags=machine.cpu_flags(), replicas=1).policy)")
    seen = subprocess.run([*prefix, sys.executable, "-c", choice], cwd=ROOT, text=True,
                          capture_output=True, check=True, timeout=60).stdout
    assert seen.strip() == "float32"
    assert CPU_BF16_FLAGS & machine.cpu_flags()  # This process still sees them.


def test_only_runs_whole_groups_and_rejects_unknown_figures():
    assert suite._groups("p6") == ["step"]
    assert suite._groups("P1, M1") == ["pipeline", "end_to_end"]
    assert suite._groups("d1") == ["demo"]
    assert suite._groups("m2") == ["scale"]
    assert suite._groups(None) == list(suite.GROUPS)
    with pytest.raises(SystemExit, match="unknown figure P9"):
        suite._groups("P1,P9")


@pytest.mark.parametrize("sizes", [FULL, QUICK], ids=["full", "quick"])
def test_m2_datasets_sit_on_either_side_of_the_memory_cache(sizes):
    """The large run's two shards both overflow data.cache_memory_mb; the other fits whole."""
    limit = sizes.scale_cache_mb * MIB
    image = sizes.scale_image_size ** 2 * scale.CHANNELS
    classes = len(sample_data.CLASSES)

    def decoded(factor: int, *, fit: bool) -> int:
        return classes * image * scale.images_per_class(
            cache_mb=sizes.scale_cache_mb, image_size=sizes.scale_image_size,
            factor=factor, classes=classes, fit=fit)

    large, fits = decoded(scale.SCALE_FACTOR, fit=False), decoded(1, fit=True)
    assert scale.SCALE_FACTOR * limit <= large < scale.SCALE_FACTOR * limit + classes * image
    assert limit - classes * image < fits <= limit
    assert VAL_SPLIT * large > limit < (1 - VAL_SPLIT) * large  # both shards go to disk
    assert fits >= sizes.batch_size * image / (1 - VAL_SPLIT)  # a training batch at least


def test_training_flops_count_convolutions_and_dense_layers():
    import keras

    from bench.step import training_flops_per_image

    inputs = keras.Input((8, 8, 1))
    x = keras.layers.Conv2D(2, 3, padding="same")(inputs)
    x = keras.layers.GlobalMaxPooling2D()(x)
    outputs = keras.layers.Dense(4)(x)
    model = keras.Model(inputs, outputs)
    forward = 2 * 3 * 3 * 1 * 2 * 8 * 8 + 2 * 2 * 4
    assert training_flops_per_image(model) == 3 * forward
