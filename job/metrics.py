"""How good a classifier is, in numbers: confusion matrix, per-class scores, accuracies.

Owns: the confusion matrix (rows: true class, columns: predicted class), precision,
recall, F1 and support per class with their macro and support-weighted averages,
accuracy and top-k accuracy, the plain-JSON form of all of it (``evaluation.json``,
the run report), and the text table ``trainjob evaluate`` prints. Pure NumPy: it is
handed labels and probabilities, never a model or a file.
Never touches: TensorFlow, matplotlib (pictures are ``job.report``), files, printing.

A score with nothing to divide by is ``None`` (``null`` in JSON, ``-`` in the table),
never a silent 0: precision of a class never predicted, recall of a class with no
images. Averages are over the classes that have the score.

Example:
    >>> matrix = confusion_matrix(np.array([0, 0, 1, 1]), np.array([0, 1, 1, 1]), num_classes=2)
    >>> matrix.tolist()
    [[1, 1], [0, 2]]
    >>> [(s.name, s.precision, s.recall) for s in class_scores(matrix, ("cat", "dog"))]
    [('cat', 1.0, 0.5), ('dog', 0.6666666666666666, 1.0)]
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

TABLE_WIDTH = 80
"""Columns of ``format_report``'s text: a standard terminal."""
NAME_WIDTH = 20
"""Most characters of a class name in the table; longer names end in an ellipsis."""
CONFUSED_PAIRS = 10
"""Largest off-diagonal cells listed when the matrix is too wide to print."""


def confusion_matrix(labels: np.ndarray, predicted: np.ndarray, *,
                     num_classes: int) -> np.ndarray:
    """Counts of (true class, predicted class): row ``i`` holds the images of class ``i``.

    Raises:
        ValueError: when the arrays differ in length or hold a label outside the classes.
    """
    labels = np.asarray(labels, dtype=np.int64).ravel()
    predicted = np.asarray(predicted, dtype=np.int64).ravel()
    if labels.shape != predicted.shape:
        raise ValueError(f"labels has {labels.size} entries and predicted {predicted.size}: "
                         "expected one of each per image.")
    for name, values in (("labels", labels), ("predicted", predicted)):
        if values.size and (values.min() < 0 or values.max() >= num_classes):
            raise ValueError(f"{name} holds {int(values.min())}..{int(values.max())}: "
                             f"expected class indices 0..{num_classes - 1}.")
    flat = np.bincount(labels * num_classes + predicted, minlength=num_classes * num_classes)
    return flat.reshape(num_classes, num_classes)


def top_k_hits(probabilities: np.ndarray, labels: np.ndarray, *, k: int) -> np.ndarray:
    """Whether each image's true class is among its ``k`` most probable classes.

    Ties count in the image's favour, as ``tf.math.in_top_k`` counts them: a class is in
    the top k when fewer than ``k`` classes have a strictly higher probability.

    Example:
        >>> top_k_hits(np.array([[0.5, 0.3, 0.2], [0.1, 0.2, 0.7]]), np.array([1, 0]), k=2)
        array([ True, False])
    """
    probabilities = np.asarray(probabilities)
    labels = np.asarray(labels, dtype=np.int64)
    true = probabilities[np.arange(len(labels)), labels]
    higher = (probabilities > true[:, np.newaxis]).sum(axis=1)
    return higher < k


@dataclass(frozen=True)
class ClassScores:
    """One row of the per-class table."""

    name: str
    precision: float | None
    """Of the images predicted as this class, the share that are; None: never predicted."""
    recall: float | None
    """Of this class's images, the share predicted as it; None: the class has no images."""
    f1: float | None
    """Harmonic mean of precision and recall; None when either is None."""
    support: int
    """Images of this class."""


def class_scores(matrix: np.ndarray, class_names: Sequence[str]) -> tuple[ClassScores, ...]:
    """Precision, recall, F1 and support of every class, from a confusion matrix."""
    matrix = np.asarray(matrix, dtype=np.int64)
    correct = np.diag(matrix)
    support = matrix.sum(axis=1)
    predicted = matrix.sum(axis=0)
    rows = []
    for index, name in enumerate(class_names):
        precision = _ratio(correct[index], predicted[index])
        recall = _ratio(correct[index], support[index])
        rows.append(ClassScores(str(name), precision, recall, _f1(precision, recall),
                                int(support[index])))
    return tuple(rows)


def _ratio(part: int, whole: int) -> float | None:
    return float(part) / float(whole) if whole else None


def _f1(precision: float | None, recall: float | None) -> float | None:
    if precision is None or recall is None:
        return None
    total = precision + recall
    return 2 * precision * recall / total if total else 0.0


def averages(scores: Sequence[ClassScores]) -> dict[str, dict[str, float | None]]:
    """Macro (each class alike) and weighted (by support) precision, recall and F1."""
    result: dict[str, dict[str, float | None]] = {"macro": {}, "weighted": {}}
    for key in ("precision", "recall", "f1"):
        pairs = [(getattr(s, key), s.support) for s in scores if getattr(s, key) is not None]
        values = np.array([value for value, _ in pairs], dtype=np.float64)
        weights = np.array([support for _, support in pairs], dtype=np.float64)
        result["macro"][key] = float(values.mean()) if len(values) else None
        result["weighted"][key] = (float(np.average(values, weights=weights))
                                   if weights.sum() else None)
    return result


@dataclass(frozen=True)
class Evaluation:
    """Everything measured on one labelled folder: built from counts, so it stays small."""

    class_names: tuple[str, ...]
    matrix: np.ndarray
    """Confusion matrix, int64, (classes, classes)."""
    top_k: int
    top_k_correct: int
    """Images whose true class was among the ``top_k`` most probable."""

    @property
    def images(self) -> int:
        return int(self.matrix.sum())

    @property
    def correct(self) -> int:
        return int(np.trace(self.matrix))

    @property
    def accuracy(self) -> float | None:
        return _ratio(self.correct, self.images)

    @property
    def top_k_accuracy(self) -> float | None:
        return _ratio(self.top_k_correct, self.images)

    def scores(self) -> tuple[ClassScores, ...]:
        return class_scores(self.matrix, self.class_names)

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON types: what ``evaluation.json`` holds (with the caller's context)."""
        scores = self.scores()
        return {
            "images": self.images,
            "accuracy": self.accuracy,
            "top_k": self.top_k,
            "top_k_accuracy": self.top_k_accuracy,
            "class_names": list(self.class_names),
            "classes": [vars(s).copy() for s in scores],
            "averages": averages(scores),
            "confusion_matrix": self.matrix.tolist(),
            "confusion_matrix_axes": "rows: true class, columns: predicted class",
        }


def format_report(evaluation: Evaluation, *, width: int = TABLE_WIDTH) -> str:
    """The text ``trainjob evaluate`` prints: accuracies, per-class table, confusion matrix.

    The matrix is printed when its columns fit in ``width``; with more classes than fit,
    the most frequent confusions are listed instead.
    """
    accuracy, top = evaluation.accuracy, evaluation.top_k_accuracy
    lines = [f"accuracy {_score(accuracy)} ({evaluation.correct} of {evaluation.images} "
             f"images), top-{evaluation.top_k} accuracy {_score(top)}", ""]
    lines += _class_table(evaluation.scores())
    lines.append("")
    lines += _matrix_lines(evaluation.matrix, evaluation.class_names, width=width)
    return "\n".join(lines)


def _class_table(scores: Sequence[ClassScores]) -> list[str]:
    name_width = max(len("weighted avg"), *(len(_short(s.name, NAME_WIDTH)) for s in scores))
    header = f"{'class':<{name_width}}  {'precision':>9}  {'recall':>6}  {'f1':>6}  support"
    rows = [header]
    for s in scores:
        rows.append(f"{_short(s.name, NAME_WIDTH):<{name_width}}  {_score(s.precision):>9}  "
                    f"{_score(s.recall):>6}  {_score(s.f1):>6}  {s.support:>7}")
    total = sum(s.support for s in scores)
    for kind, values in averages(scores).items():
        name = "macro avg" if kind == "macro" else "weighted avg"
        rows.append(f"{name:<{name_width}}  {_score(values['precision']):>9}  "
                    f"{_score(values['recall']):>6}  {_score(values['f1']):>6}  {total:>7}")
    return rows


def _matrix_lines(matrix: np.ndarray, class_names: Sequence[str], *, width: int) -> list[str]:
    name_width = min(NAME_WIDTH, max(len(name) for name in class_names))
    # As wide as the names, when the width allows; never narrower than the largest count.
    room = (width - name_width) // len(class_names) - 1
    cell = max(len(str(int(matrix.max(initial=0)))), min(name_width, max(room, 5)))
    if name_width + len(class_names) * (cell + 1) <= width:
        lines = ["confusion matrix (rows: true class, columns: predicted class)",
                 " " * name_width + "".join(f" {_short(n, cell):>{cell}}" for n in class_names)]
        for name, row in zip(class_names, matrix):
            lines.append(f"{_short(name, name_width):<{name_width}}"
                         + "".join(f" {int(count):>{cell}}" for count in row))
        return lines
    return _confused_pairs(matrix, class_names)


def _confused_pairs(matrix: np.ndarray, class_names: Sequence[str]) -> list[str]:
    off = np.asarray(matrix, dtype=np.int64).copy()
    np.fill_diagonal(off, 0)
    order = np.argsort(-off, axis=None, kind="stable")[:CONFUSED_PAIRS]
    pairs = [np.unravel_index(index, off.shape) for index in order]
    pairs = [(int(t), int(p)) for t, p in pairs if off[t, p] > 0]
    lines = [f"confusion matrix: {len(class_names)} classes, too many for this width; "
             "see confusion_matrix.png"]
    if not pairs:
        return lines + ["no image was confused with another class"]
    lines.append("most confused (true -> predicted: images):")
    lines += [f"  {_short(class_names[t], NAME_WIDTH)} -> {_short(class_names[p], NAME_WIDTH)}: "
              f"{int(off[t, p])}" for t, p in pairs]
    return lines


def _score(value: float | None) -> str:
    return "-" if value is None else f"{value:.4f}"


def _short(text: str, width: int) -> str:
    """``text`` in ``width`` characters: its start and end around an ellipsis when cut, so
    names that differ only at the end (``..._001``, ``..._002``) stay apart.

    Example:
        >>> _short("triangle", 5), _short("star", 5), _short("class_name_017", 9)
        ('tr…le', 'star', 'clas…_017')
    """
    if len(text) <= width:
        return text
    head = max(width - 1, 0) - (width - 1) // 2
    return text[:head] + "…" + text[len(text) - (width - 1) // 2:]
