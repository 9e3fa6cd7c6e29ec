"""Evaluation metrics: mAP, mean AUC and d-prime for multi-label tasks, accuracy for single-label tasks."""
from __future__ import annotations

import math

import numpy as np
from scipy.stats import norm
from sklearn.metrics import average_precision_score, roc_auc_score


def d_prime(auc: float) -> float:
    """Sensitivity index from an AUC: sqrt(2) * Phi^-1(AUC), as AudioSet papers report it."""
    auc = min(max(auc, 1e-12), 1 - 1e-12)
    return math.sqrt(2.0) * float(norm.ppf(auc))


def multilabel_metrics(scores: np.ndarray, targets: np.ndarray) -> dict:
    """mAP, mean AUC and d-prime over classes that have at least one positive and one negative example.

    ``targets`` may be soft (mixup); anything above 0.5 counts as positive. Per-class AP is returned too
    (NaN for classes that cannot be scored) so it can be written to CSV.
    """
    scores = np.asarray(scores, dtype=np.float64)
    positives = np.asarray(targets) > 0.5
    num_classes = scores.shape[1]
    ap = np.full(num_classes, np.nan)
    auc = np.full(num_classes, np.nan)
    for c in range(num_classes):
        pos = positives[:, c]
        if pos.any() and not pos.all():
            ap[c] = average_precision_score(pos, scores[:, c])
            auc[c] = roc_auc_score(pos, scores[:, c])
    scored = ~np.isnan(ap)
    if not scored.any():
        return {"mAP": float("nan"), "mAUC": float("nan"), "d_prime": float("nan"), "per_class_ap": ap.tolist()}
    mean_auc = float(np.nanmean(auc))
    return {
        "mAP": float(np.nanmean(ap)),
        "mAUC": mean_auc,
        "d_prime": d_prime(mean_auc),
        "per_class_ap": ap.tolist(),
    }


def accuracy(scores: np.ndarray, targets: np.ndarray) -> float:
    """Top-1 accuracy against the arg-max of the (possibly one-hot) targets."""
    scores = np.asarray(scores)
    return float((scores.argmax(axis=1) == np.asarray(targets).argmax(axis=1)).mean())


def classification_metrics(scores: np.ndarray, targets: np.ndarray, multilabel: bool) -> dict:
    """The metrics a task reports: accuracy for single-label; mAP, mAUC, d-prime (and accuracy) for multi-label."""
    out = {"accuracy": accuracy(scores, targets)}
    if multilabel:
        out.update(multilabel_metrics(scores, targets))
    return out
