"""Figures, their targets, results.json and the markdown table.

Owns: what a figure is (trainjob's value, the reference's, every repetition,
the ratio and whether it meets its target), the layout of results.json, and the
table printed at the end of a run (and pasted into BENCHMARKS.md).
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
    """Anything else worth keeping: accuracies, FLOPs per image, which method was used."""

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
            "details": self.details,
        }


def results(figures: Sequence[Figure], *, mode: str, environment: dict[str, Any],
            sizes: dict[str, Any], seconds: float,
            others_cpu_share: float | None) -> dict[str, Any]:
    """The results.json document (pure)."""
    return {
        "mode": mode,
        "environment": environment,
        "sizes": sizes,
        "seconds": seconds,
        "others_cpu_share": others_cpu_share,
        "figures": [figure.to_dict() for figure in figures],
    }


def write_json(path: Path, document: dict[str, Any]) -> Path:
    """Write ``document`` atomically: a reader never sees half a results file."""
    with replacing(path) as tmp:
        tmp.write_text(json.dumps(document, indent=2) + "\n")
    return Path(path)


def table(document: dict[str, Any]) -> str:
    """The markdown table of a results document, the machine line, then each figure's note.

    A note (``details["note"]``) says what one row cannot: D1's float32 side.
    """
    lines = ["| # | Figure | trainjob | Reference (same run) | Ratio | Target | Met |",
             "|---|---|---|---|---|---|---|"]
    for row in document["figures"]:
        target = Target(row["target_at_least"], row["target_value"],
                        percent=row["target"].endswith("%"))
        lines.append(
            f"| {row['id']} | {row['title']} | {_number(row['trainjob'])} {row['unit']} "
            f"| {_number(row['reference'])} {row['unit']} ({row['reference_name']}) "
            f"| {target.show(row['ratio'])} | {row['target']} "
            f"| {'yes' if row['passed'] else '**no**'} |")
    notes = [f"* {row['id']}: {row['details']['note']}" for row in document["figures"]
             if row.get("details", {}).get("note")]
    return ("\n".join(lines) + "\n\n" + machine_line(document) + "\n"
            + "".join(f"\n{note}" for note in notes) + ("\n" if notes else ""))


def machine_line(document: dict[str, Any]) -> str:
    """One line: versions, CPUs, how long it took and how busy other work kept the CPUs."""
    env = document["environment"]
    share = document.get("others_cpu_share")
    busy = "unknown" if share is None else f"{share:.0%}"
    commit = env.get("commit") or "unknown commit"
    if env.get("job_uncommitted_changes"):
        commit += " with uncommitted changes in job/"
    return (f"{document['mode']} run of {commit}, {document['seconds']:.0f} s; TensorFlow "
            f"{env['tensorflow']}, Keras {env['keras']}, Pillow {env['pillow']}, NumPy "
            f"{env['numpy']}, Python {env['python']}; {env['cpus_available']} of "
            f"{env['cpu_count']} CPUs available; other processes used {busy} of the CPU "
            "time while it ran.")


def _number(value: float) -> str:
    """Three significant figures, without scientific notation below a trillion."""
    if value == 0 or abs(value) >= 100:
        return f"{value:,.0f}"
    return f"{value:.3g}"
