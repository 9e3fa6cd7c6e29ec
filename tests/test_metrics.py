"""Metrics: mAP, mean AUC, d-prime and accuracy, against hand-computed values."""
import math

import numpy as np
import pytest

from ssast.train.metrics import accuracy, classification_metrics, d_prime, multilabel_metrics


def test_d_prime_of_known_aucs():
    assert d_prime(0.5) == pytest.approx(0.0, abs=1e-9)
    # sqrt(2) * Phi^-1(0.8413447) = sqrt(2) * 1
    assert d_prime(0.8413447460685429) == pytest.approx(math.sqrt(2), rel=1e-6)


def test_multilabel_metrics_perfect_and_by_hand():
    targets = np.array([[1, 0], [0, 1], [1, 1], [0, 0]], dtype=float)
    perfect = multilabel_metrics(targets * 0.9 + 0.05, targets)
    assert perfect["mAP"] == pytest.approx(1.0) and perfect["mAUC"] == pytest.approx(1.0)
    # class 0 scores rank a negative first: positives at ranks 2 and 3 of 4 -> AP = (1/2 + 2/3) / 2
    scores = np.array([[0.6, 0.1], [0.1, 0.9], [0.5, 0.8], [0.9, 0.2]])
    m = multilabel_metrics(scores, targets)
    assert m["per_class_ap"][0] == pytest.approx((1 / 2 + 2 / 3) / 2)
    assert m["per_class_ap"][1] == pytest.approx(1.0)
    assert m["mAP"] == pytest.approx(((1 / 2 + 2 / 3) / 2 + 1) / 2)


def test_classes_without_positives_are_left_out():
    targets = np.array([[1, 0], [0, 0]], dtype=float)
    m = multilabel_metrics(np.array([[0.9, 0.5], [0.1, 0.4]]), targets)
    assert math.isnan(m["per_class_ap"][1]) and m["mAP"] == pytest.approx(1.0)


def test_accuracy_with_soft_targets():
    scores = np.array([[0.2, 0.8], [0.7, 0.3], [0.4, 0.6]])
    targets = np.array([[0.1, 0.9], [0.6, 0.4], [0.9, 0.1]])  # mixup-style soft labels
    assert accuracy(scores, targets) == pytest.approx(2 / 3)
    assert set(classification_metrics(scores, targets, multilabel=True)) >= {"accuracy", "mAP", "mAUC", "d_prime"}
