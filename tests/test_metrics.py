"""job.metrics: the confusion matrix and the scores, checked against counting by hand."""

from __future__ import annotations

import json

import numpy as np
import pytest

from job import metrics


def test_confusion_matrix_rows_are_true_classes_and_columns_predictions():
    matrix = metrics.confusion_matrix(np.array([0, 0, 1, 2, 2, 2]), np.array([0, 1, 1, 2, 0, 2]),
                                      num_classes=3)
    assert matrix.tolist() == [[1, 1, 0], [0, 1, 0], [1, 0, 2]]


def test_scores_agree_with_counting_image_by_image_on_random_labels():
    rng = np.random.default_rng(5)
    labels, predicted = rng.integers(0, 6, 500), rng.integers(0, 6, 500)
    matrix = metrics.confusion_matrix(labels, predicted, num_classes=6)
    for index, scores in enumerate(metrics.class_scores(matrix, [f"c{i}" for i in range(6)])):
        true_positive = sum(1 for t, p in zip(labels, predicted) if t == p == index)
        assert scores.support == sum(1 for t in labels if t == index)
        assert scores.precision == pytest.approx(true_positive / sum(predicted == index))
        assert scores.recall == pytest.approx(true_positive / scores.support)
        assert scores.f1 == pytest.approx(
            2 * scores.precision * scores.recall / (scores.precision + scores.recall))
    evaluation = metrics.Evaluation(("a",) * 6, matrix, top_k=1, top_k_correct=0)
    assert evaluation.accuracy == pytest.approx(np.mean(labels == predicted))


def test_a_class_never_predicted_or_without_images_has_no_score_not_zero():
    # Class 2 has no images and is never predicted; class 1 is never predicted.
    matrix = metrics.confusion_matrix(np.array([0, 0, 1]), np.array([0, 0, 0]), num_classes=3)
    scores = metrics.class_scores(matrix, ("a", "b", "c"))
    assert [(s.precision, s.recall, s.f1, s.support) for s in scores] == [
        (pytest.approx(2 / 3), 1.0, pytest.approx(0.8), 2), (None, 0.0, None, 1),
        (None, None, None, 0)]
    averages = metrics.averages(scores)
    assert averages["macro"]["precision"] == pytest.approx(2 / 3)  # over the one class that has it
    assert averages["macro"]["recall"] == pytest.approx(0.5)
    assert averages["weighted"]["recall"] == pytest.approx(2 / 3)


def test_top_k_counts_ties_in_the_images_favour_as_tensorflow_does():
    probabilities = np.array([[0.4, 0.4, 0.2], [0.1, 0.3, 0.6], [0.5, 0.25, 0.25]])
    assert metrics.top_k_hits(probabilities, np.array([1, 0, 2]), k=1).tolist() == [
        True, False, False]
    assert metrics.top_k_hits(probabilities, np.array([1, 0, 2]), k=2).tolist() == [
        True, False, True]


@pytest.mark.parametrize(("labels", "predicted", "message"), [
    ([0, 1], [0], "expected one of each"),
    ([0, 3], [0, 1], r"labels holds 0..3: expected class indices 0..2"),
    ([0, 1], [-1, 1], r"predicted holds -1..1"),
])
def test_confusion_matrix_refuses_labels_that_do_not_fit(labels, predicted, message):
    with pytest.raises(ValueError, match=message):
        metrics.confusion_matrix(np.array(labels), np.array(predicted), num_classes=3)


def test_evaluation_is_strict_json_with_nulls_for_missing_scores():
    matrix = metrics.confusion_matrix(np.array([0, 0, 1]), np.array([0, 0, 0]), num_classes=3)
    document = metrics.Evaluation(("a", "b", "c"), matrix, top_k=2, top_k_correct=3).to_dict()
    parsed = json.loads(json.dumps(document, allow_nan=False))
    assert parsed["accuracy"] == pytest.approx(2 / 3) and parsed["top_k_accuracy"] == 1.0
    assert parsed["classes"][2] == {"name": "c", "precision": None, "recall": None, "f1": None,
                                    "support": 0}
    assert parsed["confusion_matrix"] == [[2, 0, 0], [1, 0, 0], [0, 0, 0]]


def test_report_for_a_handful_of_classes_fits_80_columns_with_the_whole_matrix():
    names = ("circle", "square", "star", "triangle")
    matrix = np.array([[9, 1, 0, 0], [0, 10, 0, 0], [2, 0, 8, 0], [0, 0, 1, 1234]])
    text = metrics.format_report(metrics.Evaluation(names, matrix, top_k=3, top_k_correct=1260))
    lines = text.splitlines()
    assert max(map(len, lines)) <= 80
    assert lines[0] == "accuracy 0.9968 (1261 of 1265 images), top-3 accuracy 0.9960"
    assert lines[-6:-4] == ["confusion matrix (rows: true class, columns: predicted class)",
                            "           circle   square     star triangle"]
    assert lines[-1].split() == ["triangle", "0", "0", "1", "1234"]


def test_report_for_many_long_class_names_abbreviates_and_lists_confusions():
    names = tuple(f"a_rather_long_class_name_{i:03d}" for i in range(40))
    matrix = np.diag(np.full(40, 5))
    matrix[3, 7], matrix[12, 1] = 4, 9
    text = metrics.format_report(metrics.Evaluation(names, matrix, top_k=5, top_k_correct=200))
    lines = text.splitlines()
    assert max(map(len, lines)) <= 80
    assert "confusion matrix: 40 classes, too many for this width" in text
    confused = lines[lines.index("most confused (true -> predicted: images):") + 1:]
    assert confused == ["  a_rather_l…_name_012 -> a_rather_l…_name_001: 9",
                        "  a_rather_l…_name_003 -> a_rather_l…_name_007: 4"]
