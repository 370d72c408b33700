"""Tests for nn.roc_auc and nn.classification_report, with scikit-learn as the trusted peer:
the project has one AUC (labels first, like sklearn) and one report, and both must agree with
an independent implementation on random data, ties included."""

import json
import math

import numpy as np
import pytest
from sklearn import metrics as skm

import nn


@pytest.mark.parametrize("seed", range(8))
def test_roc_auc_equals_sklearn_on_random_data_with_many_ties(seed):
    rng = np.random.default_rng(seed)
    n = int(rng.integers(5, 300))
    labels = rng.integers(0, 2, n)
    labels[:2] = [0, 1]  # both classes present
    # seeds 0-3: heavy ties (few distinct scores); 4-7: continuous scores
    scores = rng.integers(0, 4, n) / 3.0 if seed < 4 else rng.standard_normal(n)
    assert nn.roc_auc(labels, scores) == pytest.approx(skm.roc_auc_score(labels, scores), abs=1e-12)


def test_roc_auc_argument_order_is_labels_then_scores_and_ties_count_half():
    """The one AUC takes (labels, scores), like sklearn; swapping the arguments is an error,
    not a silently different number. A tie between a positive and a negative counts 1/2."""
    assert nn.roc_auc([0, 1], [0.2, 0.9]) == 1.0
    assert nn.roc_auc([0, 1], [0.9, 0.2]) == 0.0
    assert nn.roc_auc([0, 1], [0.5, 0.5]) == 0.5
    assert nn.roc_auc([0, 0, 1], [0.1, 0.5, 0.5]) == 0.75
    with pytest.raises(ValueError, match="not a class id"):
        nn.roc_auc([0.2, 0.9], [0, 1])


def test_roc_auc_is_nan_when_one_class_is_absent():
    assert math.isnan(nn.roc_auc([1, 1, 1], [0.1, 0.2, 0.3]))
    assert math.isnan(nn.roc_auc([0, 0], [0.1, 0.2]))


def test_roc_auc_rejects_bad_input_with_a_message():
    with pytest.raises(ValueError, match="shape"):
        nn.roc_auc([0, 1, 1], [0.1, 0.2])
    with pytest.raises(ValueError, match="binary"):
        nn.roc_auc([0, 1, 2], [0.1, 0.2, 0.3])
    with pytest.raises(ValueError, match="not finite"):
        nn.roc_auc([0, 1], [0.1, float("nan")])


@pytest.mark.parametrize("seed", range(6))
def test_binary_report_equals_sklearn(seed):
    rng = np.random.default_rng(100 + seed)
    n = int(rng.integers(10, 400))
    labels = (rng.random(n) < rng.uniform(0.2, 0.8)).astype(int)
    labels[:2] = [0, 1]
    scores = np.round(rng.random(n), 1)  # ties
    predicted = (scores >= 0.5).astype(int)
    report = nn.classification_report(labels, predicted, scores)
    assert report["accuracy"] == pytest.approx(skm.accuracy_score(labels, predicted), abs=1e-15)
    assert report["precision"] == pytest.approx(skm.precision_score(labels, predicted, zero_division=0))
    assert report["recall"] == pytest.approx(skm.recall_score(labels, predicted, zero_division=0))
    assert report["f1"] == pytest.approx(skm.f1_score(labels, predicted, zero_division=0))
    assert report["auc"] == pytest.approx(skm.roc_auc_score(labels, scores), abs=1e-12)
    assert report["confusion"] == skm.confusion_matrix(labels, predicted, labels=[0, 1]).tolist()
    counts = np.bincount(labels, minlength=2)
    assert report["majority_baseline"] == counts.max() / n and report["majority_class"] == counts.argmax()
    assert report["average"] == "positive class 1" and report["n"] == n


@pytest.mark.parametrize("seed", range(6))
def test_multiclass_report_per_class_and_macro_equal_sklearn(seed):
    rng = np.random.default_rng(200 + seed)
    n, k = int(rng.integers(20, 300)), int(rng.integers(3, 7))
    labels = rng.integers(0, k, n)
    # mostly right, sometimes wrong, and class k-1 never predicted (a zero-division case)
    predicted = np.where(rng.random(n) < 0.6, labels, rng.integers(0, k, n))
    predicted[predicted == k - 1] = 0
    report = nn.classification_report(labels, predicted, n_classes=k)
    classes = list(range(k))
    precision, recall, f1, support = skm.precision_recall_fscore_support(
        labels, predicted, labels=classes, zero_division=0)
    for c, row in enumerate(report["per_class"]):
        assert row["class"] == c and row["support"] == support[c]
        assert row["precision"] == pytest.approx(precision[c])
        assert row["recall"] == pytest.approx(recall[c])
        assert row["f1"] == pytest.approx(f1[c])
    for key, fn in (("precision", skm.precision_score), ("recall", skm.recall_score),
                    ("f1", skm.f1_score)):
        expected = fn(labels, predicted, labels=classes, average="macro", zero_division=0)
        assert report[key] == pytest.approx(expected), key
    assert report["average"] == "macro" and report["auc"] is None
    assert report["confusion"] == skm.confusion_matrix(labels, predicted, labels=classes).tolist()
    assert report["accuracy"] == pytest.approx(skm.accuracy_score(labels, predicted))


def test_confusion_rows_are_true_classes_and_columns_predicted():
    report = nn.classification_report([0, 0, 1, 2], [1, 1, 1, 0], n_classes=3)
    assert report["confusion"] == [[0, 2, 0], [0, 1, 0], [1, 0, 0]]
    assert report["majority_baseline"] == 0.5 and report["accuracy"] == 0.25


def test_report_accepts_two_column_probabilities_and_is_json_ready():
    import json

    probabilities = np.array([[0.9, 0.1], [0.2, 0.8], [0.6, 0.4]])
    report = nn.classification_report(np.array([0, 1, 1]), probabilities.argmax(axis=1), probabilities)
    assert report["auc"] == 1.0
    assert json.loads(json.dumps(report)) == report


def test_report_rejects_inconsistent_input():
    with pytest.raises(ValueError, match="shape"):
        nn.classification_report([0, 1], [0, 1, 1])
    with pytest.raises(ValueError, match="outside"):
        nn.classification_report([0, 1, 2], [0, 1, 1], n_classes=2)
    with pytest.raises(ValueError, match="negative"):
        nn.classification_report([0, -1], [0, 1])
    with pytest.raises(ValueError, match="at least one"):
        nn.classification_report([], [])


def test_auc_of_one_class_is_none_with_a_note_never_nan():
    """NaN is no JSON value: a report whose labels hold one class says None and why."""
    report = nn.classification_report([1, 1, 1], [1, 0, 1], [0.9, 0.2, 0.7], 2)
    assert report["auc"] is None and report["auc_note"] == nn.AUC_UNDEFINED
    json.dumps(report, allow_nan=False)


@pytest.mark.parametrize("seed", range(8))
def test_average_precision_equals_sklearn_ties_included(seed):
    """PR-AUC is scikit-learn's average_precision_score: the step sum over distinct scores."""
    rng = np.random.default_rng(300 + seed)
    n = int(rng.integers(5, 300))
    labels = (rng.random(n) < rng.uniform(0.05, 0.5)).astype(int)
    labels[:2] = [0, 1]
    scores = rng.integers(0, 5, n) / 4.0 if seed < 4 else rng.standard_normal(n)
    assert nn.average_precision(labels, scores) == pytest.approx(
        skm.average_precision_score(labels, scores), abs=1e-12)
    assert math.isnan(nn.average_precision(np.zeros(4, int), np.arange(4.0)))


@pytest.mark.parametrize("seed", range(6))
def test_balanced_accuracy_equals_sklearn_binary_and_multiclass(seed):
    rng = np.random.default_rng(400 + seed)
    n, k = int(rng.integers(20, 300)), int(rng.integers(2, 6))
    labels = rng.integers(0, k, n)
    predicted = np.where(rng.random(n) < 0.5, labels, rng.integers(0, k, n))
    report = nn.classification_report(labels, predicted, n_classes=k)
    assert report["balanced_accuracy"] == pytest.approx(
        skm.balanced_accuracy_score(labels, predicted), abs=1e-12)


def test_binary_report_of_positive_class_zero_equals_sklearn_pos_label_zero():
    """With the positive class 0 (the minority, say), precision, recall, F1 and PR-AUC are
    those of class 0 — its probability 1 − P(class 1) against "is class 0"; ROC AUC is the same
    for either class."""
    rng = np.random.default_rng(7)
    labels = (rng.random(200) < 0.8).astype(int)  # class 0 is rare
    scores = np.clip(0.6 * labels + 0.5 * rng.random(200), 0, 1)
    predicted = (scores >= 0.5).astype(int)
    report = nn.classification_report(labels, predicted, scores, positive_class=0)
    assert report["positive_class"] == 0 and report["average"] == "positive class 0"
    for key, fn in (("precision", skm.precision_score), ("recall", skm.recall_score),
                    ("f1", skm.f1_score)):
        assert report[key] == pytest.approx(fn(labels, predicted, pos_label=0)), key
    assert report["average_precision"] == pytest.approx(
        skm.average_precision_score(1 - labels, 1 - scores), abs=1e-12)
    assert report["auc"] == pytest.approx(skm.roc_auc_score(labels, scores), abs=1e-12)
    assert nn.minority_class(labels, 2) == 0
