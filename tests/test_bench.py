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
import yaml

from bench import budget, scale, suite
from bench.measure import BenchmarkFailed, run_child
from bench.report import Figure, Target, Timing, results, table
from bench.sizes import FULL, QUICK
from bench.specs import VAL_SPLIT, mixed_precision_setting, prepare_runs
from job import demo, sample_data
from job import spec as spec_module

ROOT = Path(__file__).resolve().parent.parent
MIB = 2**20


@pytest.mark.slow
def test_quick_run_in_float32_reports_every_figure_with_numbers_and_versions(tmp_path):
    """The smoke run, with --precision float32 (the default, auto, is trainjob's own choice:
    the same code with the spec key left out, which the spec and parser tests cover)."""
    out = tmp_path / "results.json"
    completed = subprocess.run(
        [sys.executable, "-m", "bench", "--quick", "--precision", "float32", "--out", str(out),
         "--work-dir", str(tmp_path / "work")],
        cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert completed.returncode == 0, completed.stderr[-3000:]

    document = json.loads(out.read_text())
    assert (document["mode"], document["precision"]) == ("quick", "float32")
    figures = {row["id"]: row for row in document["figures"]}
    assert list(figures) == list(suite.ORDER)
    for row in figures.values():
        for key in ("trainjob", "reference", "ratio"):
            assert isinstance(row[key], float) and math.isfinite(row[key]), (row["id"], key)
        assert row["trainjob_samples"] and row["reference_samples"], row["id"]
        assert len(row["round_ratios"]) == len(row["trainjob_samples"]), row["id"]
        assert isinstance(row["passed"], bool)
        assert f"| {row['id']} |" in completed.stdout
    trained = ("P3", "P4", "P5", "P6", "P7", "M1", "M2")
    assert [figures[id]["precision"] for id in trained] == ["float32"] * len(trained)
    assert figures["P1"]["precision"] is None  # no model: the input pipeline only
    ceilings = figures["P1"]["details"]  # one thread times the cores, and the threads at once
    assert ceilings["floor_target_scale_images_per_second"] > 0
    assert ceilings["floor_target_scale_together_images_per_second"] > 0
    assert math.isclose(ceilings["share_of_ceiling_together"], figures["P1"]["trainjob"]
                        / ceilings["floor_target_scale_together_images_per_second"])
    assert (figures["D1"]["precision"] == "float32"
            or "bfloat16 could not be hidden" in figures["D1"]["details"]["note"])
    assert "float32_samples" not in figures["P3"]["details"]  # no second float32 side
    for key in ("trainjob_val_accuracy", "reference_val_accuracy"):
        assert 0.0 <= figures["P4"]["details"][key] <= 1.0
    scale_run = figures["M2"]["details"]
    assert scale_run["decoded_mib"]["large"] >= 8 * scale_run["cache_memory_mb"]
    assert scale_run["decoded_mib"]["fits"] <= scale_run["cache_memory_mb"]
    demo_run = figures["D1"]["details"]
    side = demo_run["side"]
    assert demo_run[f"{side}_epochs"][0] >= demo.MIN_EPOCHS
    assert demo_run[f"{side}_estimate_seconds"][0] > 0
    assert 0.0 <= demo_run[f"{side}_test_accuracy"][0] <= 1.0
    assert "* D1: in float32" in completed.stdout
    assert set(document["groups"]) >= set(suite.GROUPS)
    assert "bench: whole suite took " in completed.stderr.splitlines()[-1]
    plan = document["plan"]
    assert plan["rounds"] == {name: 1 for name in suite.RUN_ORDER}  # --quick keeps one
    assert plan["calibration"]["images_per_second"] > 0 and plan["estimated_seconds"] > 0
    assert plan["cut"] == {} and not plan["fixed"]
    assert any("plan: calibration" in line for line in completed.stderr.splitlines())
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


ENVIRONMENT = {"tensorflow": "2", "keras": "3", "pillow": "1", "numpy": "2", "python": "3",
               "cpu_count": 2, "cpus_available": 2}


def document_of(figures, *, precision="auto", others_cpu_share=0.0):
    return results(figures, mode="full", precision=precision, environment=ENVIRONMENT,
                   sizes={}, timing=Timing(seconds=1.0, cpu_seconds=1.5,
                                           others_cpu_share=others_cpu_share))


def test_table_marks_a_missed_target_and_shows_medians():
    faster = Figure.of("P1", title="first epoch", unit="images/s", reference_name="keras",
                       target=Target(at_least=True, value=2.0), trainjob=[300, 100, 200],
                       reference=[100, 100, 100])
    slower = Figure.of("P4", title="end to end", unit="s", reference_name="keras",
                       target=Target(at_least=False, value=0.7), trainjob=[9.0],
                       reference=[10.0])
    document = document_of([faster, slower], others_cpu_share=0.5)
    rows = table(document).splitlines()
    assert rows[2].startswith("| P1 |") and "| 200 images/s |" in rows[2]
    assert "| 2.00x | 1.00–3.00x | ≥ 2.00x | yes |" in rows[2]
    assert "| 0.90x | 0.90x (one round) | ≤ 0.70x | **no** |" in rows[3]
    assert "other processes used 50% of the CPU time" in table(document)


def test_every_ratio_keeps_its_rounds_spread_in_the_results():
    """Each round's own trainjob / reference, paired round by round; a fixed reference
    (D1's budget) divides every round."""
    paired = Figure.of("P3", title="step", unit="images/s", reference_name="fit",
                       target=Target(at_least=True, value=1.0), trainjob=[120, 90, 100],
                       reference=[100, 100, 80])
    budget = Figure.of("D1", title="demo", unit="s", reference_name="budget",
                       target=Target(at_least=False, value=1.0), trainjob=[30.0, 60.0],
                       reference=[120.0])

    rows = {row["id"]: row for row in document_of([paired, budget])["figures"]}

    assert rows["P3"]["round_ratios"] == pytest.approx([1.2, 0.9, 1.25])
    assert rows["P3"]["spread"] == pytest.approx([0.9, 1.25])
    assert rows["P3"]["ratio"] == pytest.approx(1.0)  # the ratio of the medians
    assert rows["D1"]["round_ratios"] == pytest.approx([0.25, 0.5])


def test_table_and_results_say_which_precision_each_figure_used():
    trained = Figure.of("P3", title="step", unit="images/s", reference_name="fit",
                        target=Target(at_least=True, value=1.0), trainjob=[1.0],
                        reference=[1.0], precision="mixed_bfloat16")
    no_model = Figure.of("P1", title="input", unit="images/s", reference_name="keras",
                         target=Target(at_least=True, value=1.0), trainjob=[1.0],
                         reference=[1.0])
    document = document_of([no_model, trained], precision="float32")

    lines = table(document).splitlines()

    assert document["precision"] == "float32"
    assert [row["precision"] for row in document["figures"]] == [None, "mixed_bfloat16"]
    assert lines[0].startswith("| # | Figure | Precision |")
    assert lines[2].startswith("| P1 | input | – |")
    assert lines[3].startswith("| P3 | step | bfloat16 |")
    assert "with --precision float32" in lines[-1]


def test_table_prints_each_figures_note_under_the_machine_line():
    figure = Figure.of("D1", title="demo", unit="s", reference_name="budget",
                       target=Target(at_least=False, value=1.0), trainjob=[40.0],
                       reference=[120.0], note="float32 path: 50 s")

    lines = table(document_of([figure])).splitlines()

    assert lines[2].startswith("| D1 |") and "| 0.33x | 0.33x (one round) | ≤ 1.00x | yes |" \
        in lines[2]
    assert lines[-1] == "* D1: float32 path: 50 s"
    assert lines[-3].startswith("full run of")


def test_last_line_gives_the_whole_suites_wall_time_its_parts_and_its_cpu_time():
    document = {"seconds": 600.4, "cpu_seconds": 900.0, "others_cpu_share": 0.25,
                "environment": {"cpus_available": 2},
                "groups": {"step": {"seconds": 100.0, "cpu_seconds": 150.0}}}

    line = suite.whole_suite_line(document)

    assert line == ("bench: whole suite took 600 s (step 100 s); its processes used 900 "
                    "CPU-seconds (450 s on 2 idle cores at the least); other processes used "
                    "25% of the CPU time")


def test_precision_is_auto_unless_float32_is_asked_for_quick_or_not():
    assert suite._parser().parse_args([]).precision == "auto"
    assert suite._parser().parse_args(["--quick", "--precision", "float32"]).precision \
        == "float32"
    with pytest.raises(SystemExit):
        suite._parser().parse_args(["--precision", "bfloat16"])


def test_repetitions_set_every_figures_rounds_the_demos_included():
    def rounds(sizes):
        return (sizes.repetitions, sizes.predict_repetitions, sizes.scale_repetitions,
                sizes.demo_rounds)

    assert (rounds(FULL), rounds(QUICK)) == ((3, 2, 2, 2), (1, 1, 1, 1))
    five = suite.sizes_of(suite._parser().parse_args(["--repetitions", "5"]))
    assert (five.name, rounds(five), five.rounds_fixed) == ("full", (5, 5, 5, 5), True)
    assert not FULL.rounds_fixed and not QUICK.rounds_fixed  # the budget may plan them
    assert suite.sizes_of(suite._parser().parse_args(["--quick"])) == QUICK


@pytest.mark.parametrize(("precision", "expected"), [("auto", None), ("float32", False)])
def test_float32_turns_mixed_precision_off_in_every_training_spec(tmp_path, precision,
                                                                  expected):
    """auto leaves trainjob's own default; float32 writes mixed_precision: false."""
    _, path = prepare_runs(tmp_path / "train", FULL, work_dir=tmp_path, kind="e2e", epochs=1,
                           mixed_precision=mixed_precision_setting(precision))

    written = yaml.safe_load(path.read_text())["train"]

    assert written.get("mixed_precision") == expected
    assert spec_module.load(path).train.mixed_precision == (
        "auto" if expected is None else False)


def test_make_bench_passes_its_precision_through():
    for target, flag in (("bench", "-m bench --precision float32"),
                         ("bench-smoke", "-m bench --quick --precision float32")):
        shown = subprocess.run(["make", "-n", "-o", ".venv/.installed", target,
                                "PRECISION=float32"], cwd=ROOT, capture_output=True, text=True,
                               check=True).stdout
        assert flag in shown, shown
    shown = subprocess.run(["make", "-n", "-o", ".venv/.installed", "bench"], cwd=ROOT,
                           capture_output=True, text=True, check=True).stdout
    assert "-m bench --precision auto" in shown


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


FULL_ROUNDS = {name: FULL.rounds(name) for name in suite.RUN_ORDER}
FLOAT32 = budget.reference_costs(mode="full", bfloat16=False)


def plan_at(slowness, *, most=FULL_ROUNDS, costs=FLOAT32, fixed=False, spent_seconds=10.0):
    return budget.make_plan(costs, most=most, slowness=slowness, spent_seconds=spent_seconds,
                            fixed=fixed)


def test_each_group_runs_the_rounds_its_plan_gives_it_and_no_other_groups():
    for name in suite.RUN_ORDER:
        changed = FULL.with_rounds(name, 7)
        assert changed.rounds(name) == 7
        assert [changed.rounds(other) for other in suite.RUN_ORDER
                if FULL.with_rounds(other, 7) != changed] == [
            FULL.rounds(other) for other in suite.RUN_ORDER if FULL.with_rounds(other, 7)
            != changed]


def test_a_machine_faster_than_the_reference_keeps_every_round():
    plan = plan_at(budget.slowness_of(budget.REFERENCE_IMAGES_PER_SECOND * 1.25))

    assert plan.rounds == FULL_ROUNDS and plan.cut == {}
    assert plan.estimated_seconds <= budget.BUDGET_SECONDS and not plan.over_budget
    assert budget.over_budget_line(plan) is None


@pytest.mark.parametrize("slowness", [1.15, 1.2, 1.3, 1.4])
def test_a_slower_machine_loses_rounds_and_fits_the_budget(slowness):
    """Nothing below two rounds, nothing above the preset's."""
    plan = plan_at(slowness)

    assert plan.cut, plan
    assert plan.estimated_seconds <= budget.BUDGET_SECONDS
    assert all(2 <= plan.rounds[name] <= FULL_ROUNDS[name] for name in FULL_ROUNDS)
    assert "(cut from 3)" in budget.plan_line(plan, {"images_per_second": 500.0,
                                                     "precision": "float32"})


def test_rounds_are_cut_where_they_cost_the_spread_least_and_p3_keeps_its_longest():
    """P1/P2's round goes first; where one P4/M1/P5 round must go, P1/P2's comes back
    once there is room; P3/P6 keeps its third round longest."""
    assert plan_at(1.1).cut == {}  # The reference machine fits with a margin.
    assert plan_at(1.15).cut == {"pipeline": 2}
    assert plan_at(1.2).cut == {"end_to_end": 2}
    assert plan_at(1.3).cut == {"pipeline": 2, "end_to_end": 2}
    assert plan_at(1.4).cut == {"pipeline": 2, "step": 2, "end_to_end": 2}


def test_a_machine_too_slow_for_two_rounds_runs_two_and_says_so_up_front():
    plan = plan_at(5.0)

    assert plan.rounds == {name: 2 for name in FULL_ROUNDS}
    assert plan.over_budget
    assert budget.over_budget_line(plan).startswith("plan: even 2 rounds of every figure")


def test_repetitions_keep_their_rounds_whatever_the_estimate():
    asked = {name: 5 for name in FULL_ROUNDS}

    plan = plan_at(3.0, most=asked, fixed=True)

    assert plan.rounds == asked and plan.cut == {} and plan.over_budget
    assert budget.over_budget_line(plan) is None
    assert budget.replan(plan, FLOAT32, spent_seconds=400.0,
                         done={"pipeline": 390.0}).rounds == asked


def test_quick_keeps_its_one_round_and_gets_an_estimate():
    quick = {name: QUICK.rounds(name) for name in suite.RUN_ORDER}

    plan = plan_at(4.0, most=quick, costs=budget.reference_costs(mode="quick",
                                                                 bfloat16=False))

    assert plan.rounds == quick == {name: 1 for name in suite.RUN_ORDER}
    assert plan.estimated_seconds > 0


def test_bfloat16_runs_are_planned_with_p3s_third_side():
    auto = budget.reference_costs(mode="full", bfloat16=True)

    assert auto["step"].round_seconds > FLOAT32["step"].round_seconds
    assert suite._bfloat16("float32") is False


def test_the_deadline_lowers_the_rest_when_the_groups_so_far_ran_slower_than_planned():
    plan = plan_at(0.8)
    assert plan.rounds == FULL_ROUNDS
    pipeline_estimate = FLOAT32["pipeline"].seconds(3, slowness=0.8)

    later = budget.replan(plan, FLOAT32, spent_seconds=10 + 3 * pipeline_estimate,
                          done={"pipeline": 3 * pipeline_estimate})

    assert later.slowness == pytest.approx(2.4)
    assert later.rounds["pipeline"] == 3  # already run: it stays as it ran
    assert later.cut and all(later.rounds[name] >= 2 for name in FULL_ROUNDS)
    assert len(later.events) == 1 and "end_to_end 3 -> 2" in later.events[0]


def test_the_deadline_gives_back_rounds_a_busy_calibration_took_but_never_more():
    plan = plan_at(1.5)
    assert plan.cut
    pipeline_estimate = FLOAT32["pipeline"].seconds(plan.rounds["pipeline"], slowness=1.5)

    later = budget.replan(plan, FLOAT32, spent_seconds=10 + pipeline_estimate / 2,
                          done={"pipeline": pipeline_estimate / 2})

    assert later.slowness == pytest.approx(0.75)
    assert {name: later.rounds[name] for name in FULL_ROUNDS if name != "pipeline"} == {
        name: FULL_ROUNDS[name] for name in FULL_ROUNDS if name != "pipeline"}
    assert later.estimated_seconds <= budget.BUDGET_SECONDS


def test_the_machine_line_says_when_the_budget_cut_rounds():
    figure = Figure.of("P4", title="end to end", unit="s", reference_name="keras",
                       target=Target(at_least=False, value=0.75), trainjob=[9.0, 8.0],
                       reference=[10.0, 10.0])
    cut = plan_at(1.2)
    calibration = {"images_per_second": 500.0, "precision": "float32"}

    def machine_line(plan):
        document = document_of([figure])
        document["plan"] = budget.plan_json(plan, calibration)
        return next(line for line in table(document).splitlines()
                    if line.startswith("full run of"))

    assert "rounds cut by the 540 s budget: " in machine_line(cut)
    assert all(f"{name} {count} of 3" in machine_line(cut) for name, count in cut.cut.items())
    assert "rounds cut" not in machine_line(plan_at(0.8))
    assert budget.plan_json(cut, calibration)["speed_vs_reference"] == pytest.approx(
        500.0 / budget.REFERENCE_IMAGES_PER_SECOND)
