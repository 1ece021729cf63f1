"""Figures, their targets, results.json and the markdown table.

Owns: what a figure is (trainjob's value, the reference's, every repetition,
the ratio, each round's own ratio (the spread), the precision the trainjob side
computed in, and whether it meets its target), the layout of results.json, and
the table printed at the end of a run (and pasted into BENCHMARKS.md), with its
machine line (which also says which rounds the budget cut).
Never touches: measuring, processes, TensorFlow.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.measure import median
from job.atomic import replacing


@dataclass(frozen=True)
class Target:
    """What the ratio trainjob / reference must be: at least or at most ``value``."""

    at_least: bool
    value: float
    percent: bool = False
    """Show the ratio as a percentage (P6's fraction of peak) instead of ``1.5x``."""

    def met(self, ratio: float) -> bool:
        return ratio >= self.value if self.at_least else ratio <= self.value

    def show(self, ratio: float) -> str:
        return f"{ratio:.0%}" if self.percent else f"{ratio:.2f}x"

    def __str__(self) -> str:
        return ("≥ " if self.at_least else "≤ ") + self.show(self.value)


@dataclass(frozen=True)
class Figure:
    """One row of the table: trainjob against its reference, medians of the repetitions."""

    id: str
    title: str
    unit: str
    reference_name: str
    target: Target
    trainjob_samples: tuple[float, ...]
    reference_samples: tuple[float, ...]
    details: dict[str, Any] = field(default_factory=dict)
    """Anything else worth keeping: accuracies, FLOPs per image, which method was used.
    ``details["precision"]`` (a Keras policy or dtype name) is what the trainjob side
    computed in; figures without a model (the input pipeline) leave it out."""

    @classmethod
    def of(cls, id: str, *, title: str, unit: str, reference_name: str, target: Target,
           trainjob: Sequence[float], reference: Sequence[float], **details: Any) -> Figure:
        return cls(id, title, unit, reference_name, target, tuple(map(float, trainjob)),
                   tuple(map(float, reference)), dict(details))

    @property
    def trainjob(self) -> float:
        return median(self.trainjob_samples)

    @property
    def reference(self) -> float:
        return median(self.reference_samples)

    @property
    def ratio(self) -> float:
        return self.trainjob / self.reference if self.reference else float("inf")

    @property
    def round_ratios(self) -> tuple[float, ...]:
        """trainjob / reference of each round: the spread behind the ratio of the medians.

        Samples pair up round by round (``measure.alternate`` runs every side once a
        round); a reference with one value (D1's fixed budget) divides every round.

        Example:
            >>> Figure.of("P4", title="", unit="s", reference_name="", target=Target(False, 1),
            ...           trainjob=[7, 8], reference=[10, 10]).round_ratios
            (0.7, 0.8)
        """
        theirs = self.reference_samples
        if len(theirs) == 1:
            theirs = theirs * len(self.trainjob_samples)
        if len(theirs) != len(self.trainjob_samples):
            return ()
        return tuple(ours / ref if ref else float("inf")
                     for ours, ref in zip(self.trainjob_samples, theirs))

    @property
    def passed(self) -> bool:
        return self.target.met(self.ratio)

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id, "title": self.title, "unit": self.unit,
            "trainjob": self.trainjob, "reference": self.reference,
            "reference_name": self.reference_name, "ratio": self.ratio,
            "target": str(self.target), "target_at_least": self.target.at_least,
            "target_value": self.target.value, "passed": self.passed,
            "trainjob_samples": list(self.trainjob_samples),
            "reference_samples": list(self.reference_samples),
            "round_ratios": list(self.round_ratios),
            "spread": ([min(self.round_ratios), max(self.round_ratios)]
                       if self.round_ratios else None),
            "precision": self.details.get("precision"),
            "details": self.details,
        }


@dataclass(frozen=True)
class Timing:
    """How long a run took, the CPU it used, how busy other work kept the machine, and the
    rounds the budget planned for it."""

    seconds: float
    """Wall time of the whole suite, data generation included."""
    cpu_seconds: float | None
    """User + system time of the suite process and of every child it waited for: what
    the run would need of the cores on an idle machine (divided by the cores, a lower
    bound on its wall time there)."""
    others_cpu_share: float | None
    """Share of all cores' time that processes outside the suite used while it ran."""
    groups: dict[str, dict[str, float | None]] = field(default_factory=dict)
    """Each group's ``seconds`` and ``cpu_seconds``, by name, in the order they ran."""
    plan: dict[str, Any] | None = None
    """The budget's plan (``bench.budget.plan_json``): the calibration, the estimate and
    each group's rounds, cut or not."""


def results(figures: Sequence[Figure], *, mode: str, precision: str,
            environment: dict[str, Any], sizes: dict[str, Any],
            timing: Timing) -> dict[str, Any]:
    """The results.json document (pure). ``precision`` is what was asked for (``auto``
    or ``float32``); each figure's ``precision`` is what its trainjob side computed in."""
    return {
        "mode": mode,
        "precision": precision,
        "environment": environment,
        "sizes": sizes,
        "seconds": timing.seconds,
        "cpu_seconds": timing.cpu_seconds,
        "others_cpu_share": timing.others_cpu_share,
        "groups": timing.groups,
        "plan": timing.plan,
        "figures": [figure.to_dict() for figure in figures],
    }


def write_json(path: Path, document: dict[str, Any]) -> Path:
    """Write ``document`` atomically: a reader never sees half a results file."""
    with replacing(path) as tmp:
        tmp.write_text(json.dumps(document, indent=2) + "\n")
    return Path(path)


def table(document: dict[str, Any]) -> str:
    """The markdown table of a results document, the machine line, then each figure's note.

    Every ratio has its rounds' spread beside it (the lowest and highest of the
    rounds' own ratios) and the precision the trainjob side computed in. A note
    (``details["note"]``) says what one row cannot: D1's float32 side.
    """
    lines = ["| # | Figure | Precision | trainjob | Reference (same run) | Ratio "
             "| Rounds (min–max) | Target | Met |",
             "|---|---|---|---|---|---|---|---|---|"]
    for row in document["figures"]:
        target = Target(row["target_at_least"], row["target_value"],
                        percent=row["target"].endswith("%"))
        lines.append(
            f"| {row['id']} | {row['title']} | {precision_name(row.get('precision'))} "
            f"| {_number(row['trainjob'])} {row['unit']} "
            f"| {_number(row['reference'])} {row['unit']} ({row['reference_name']}) "
            f"| {target.show(row['ratio'])} | {spread(row.get('round_ratios') or [], target)} "
            f"| {row['target']} | {'yes' if row['passed'] else '**no**'} |")
    notes = [f"* {row['id']}: {row['details']['note']}" for row in document["figures"]
             if row.get("details", {}).get("note")]
    return ("\n".join(lines) + "\n\n" + machine_line(document) + "\n"
            + "".join(f"\n{note}" for note in notes) + ("\n" if notes else ""))


def spread(ratios: Sequence[float], target: Target) -> str:
    """The lowest and highest of the rounds' ratios, as the ratio is shown.

    Example:
        >>> spread([0.73, 0.64, 0.70], Target(at_least=False, value=0.7))
        '0.64–0.73x'
        >>> spread([0.5], Target(at_least=True, value=0.25, percent=True))
        '50% (one round)'
    """
    if not ratios:
        return "–"
    low, high = target.show(min(ratios)), target.show(max(ratios))
    if len(ratios) == 1:
        return f"{low} (one round)"
    unit = "%" if target.percent else "x"
    return f"{low.removesuffix(unit)}–{high}"


def precision_name(policy: str | None) -> str:
    """What a Keras policy computes in: ``mixed_bfloat16`` -> ``bfloat16``; None -> ``–``.

    Example:
        >>> precision_name("mixed_bfloat16"), precision_name("float32"), precision_name(None)
        ('bfloat16', 'float32', '–')
    """
    if not policy:
        return "–"
    return policy.removeprefix("mixed_")


def machine_line(document: dict[str, Any]) -> str:
    """One line: versions, CPUs, precision asked for, how long it took, the CPU it used,
    the rounds the budget cut, and how busy other work kept the CPUs."""
    env = document["environment"]
    share = document.get("others_cpu_share")
    busy = "unknown" if share is None else f"{share:.0%}"
    commit = env.get("commit") or "unknown commit"
    if env.get("job_uncommitted_changes"):
        commit += " with uncommitted changes in job/"
    cpu = document.get("cpu_seconds")
    used = "" if cpu is None else f" ({cpu:,.0f} CPU-seconds)"
    return (f"{document['mode']} run of {commit} with --precision "
            f"{document.get('precision', 'auto')}, {document['seconds']:.0f} s{used}"
            f"{budget_cuts(document.get('plan'))}; "
            f"TensorFlow {env['tensorflow']}, Keras {env['keras']}, Pillow {env['pillow']}, "
            f"NumPy {env['numpy']}, Python {env['python']}; {env['cpus_available']} of "
            f"{env['cpu_count']} CPUs available; other processes used {busy} of the CPU "
            "time while it ran.")


def budget_cuts(plan: dict[str, Any] | None) -> str:
    """``, rounds cut by the 540 s budget: ...`` when the plan cut any; else nothing.

    Example:
        >>> budget_cuts({"budget_seconds": 540.0, "cut": {"end_to_end": 2},
        ...              "most_rounds": {"end_to_end": 3}})
        ', rounds cut by the 540 s budget: end_to_end 2 of 3'
        >>> budget_cuts({"budget_seconds": 540.0, "cut": {}, "most_rounds": {}})
        ''
    """
    if not plan or not plan.get("cut"):
        return ""
    cuts = ", ".join(f"{name} {count} of {plan['most_rounds'][name]}"
                     for name, count in plan["cut"].items())
    return f", rounds cut by the {plan['budget_seconds']:.0f} s budget: {cuts}"


def _number(value: float) -> str:
    """Three significant figures, without scientific notation below a trillion."""
    if value == 0 or abs(value) >= 100:
        return f"{value:,.0f}"
    return f"{value:.3g}"
