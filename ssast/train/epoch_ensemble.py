"""The running ensemble of per-epoch predictions (``train.epoch_ensemble``), as the authors report it beside each epoch:
after epoch e, the mean of the predicted probabilities of epochs 1..e on the evaluation list, scored like one model
(their ``cum_mAP`` / ``cum_acc``; ssast src/traintest.py:188,343-359, ast src/traintest.py:173,322).

Each epoch's predictions are written to ``RUN/ensemble/epoch-NNN.npz`` (probabilities, targets, clip keys), so that
``ssast evaluate --ensemble RUN`` re-scores the ensemble without the model, and a resumed run picks up the running mean
where it stopped. Each file also names the step checkpoint of its epoch: kept checkpoints (``train.keep_last``) given to
``ssast evaluate CKPT...`` recompute the same ensemble from the weights.
"""
from __future__ import annotations

import io
import json
import re
from pathlib import Path

import numpy as np

from ssast.atomic import atomic_write
from ssast.data.manifest import DataError
from ssast.train.metrics import classification_metrics

FOLDER = "ensemble"
_NAME = re.compile(r"^epoch-(\d+)\.npz$")


def _path(run_dir: Path, epoch: int) -> Path:
    return Path(run_dir) / FOLDER / f"epoch-{epoch:03d}.npz"


def saved_epochs(run_dir: str | Path) -> list[Path]:
    """The epochs' prediction files of a run, in epoch order."""
    folder = Path(run_dir) / FOLDER
    files = [p for p in folder.glob("epoch-*.npz") if _NAME.match(p.name)] if folder.is_dir() else []
    return sorted(files, key=lambda p: int(_NAME.match(p.name).group(1)))


def read_epoch(path: Path) -> dict:
    with np.load(path, allow_pickle=False) as z:
        return {"scores": z["scores"], "targets": z["targets"], "keys": list(z["keys"]),
                **json.loads(str(z["meta"]))}


def ensemble_metrics(scores_sum: np.ndarray, count: int, targets: np.ndarray, multilabel: bool) -> dict:
    """The metrics of the mean of ``count`` epochs' probabilities, named ensemble_<metric> (per-class AP left out)."""
    metrics = classification_metrics(scores_sum / count, targets, multilabel)
    metrics.pop("per_class_ap", None)
    return {f"ensemble_{k}": v for k, v in metrics.items()}


class EpochEnsemble:
    """The running sum of the epochs' probabilities on one list; ``add`` returns the ensemble's metrics so far."""

    def __init__(self, run_dir: str | Path, multilabel: bool) -> None:
        self.run_dir = Path(run_dir)
        self.multilabel = multilabel
        self.sum: np.ndarray | None = None
        self.count = 0

    def _restore(self, before: int) -> None:
        """After a resume: the sum of the saved epochs before ``before`` (the in-memory sum is not checkpointed)."""
        for path in saved_epochs(self.run_dir):
            got = read_epoch(path)
            if got["epoch"] < before:
                self.sum = got["scores"].astype(np.float64) if self.sum is None else self.sum + got["scores"]
                self.count += 1

    def add(self, epoch: int, scores: np.ndarray, targets: np.ndarray, keys: list[str], split: str,
            checkpoint: str) -> dict:
        if self.sum is None:
            self._restore(epoch)
        if self.sum is not None and self.sum.shape != scores.shape:
            raise RuntimeError(f"epoch {epoch}: {scores.shape} predictions, but the ensemble so far has "
                               f"{self.sum.shape} (the evaluation list changed within the run)")
        meta = json.dumps({"epoch": epoch, "split": split, "checkpoint": checkpoint, "multilabel": self.multilabel})

        def write(f) -> None:
            buf = io.BytesIO()
            np.savez(buf, scores=scores.astype(np.float32), targets=targets.astype(np.float32),
                     keys=np.asarray(keys, dtype=str), meta=np.asarray(meta))
            f.write(buf.getvalue())

        _path(self.run_dir, epoch).parent.mkdir(parents=True, exist_ok=True)
        atomic_write(_path(self.run_dir, epoch), write)
        # the saved float32 values, so that re-scoring the files gives exactly the logged figure
        stored = scores.astype(np.float32).astype(np.float64)
        self.sum = stored if self.sum is None else self.sum + stored
        self.count += 1
        return ensemble_metrics(self.sum, self.count, targets, self.multilabel) | {
            "ensemble_epochs": float(self.count)}


def rescore(run_dir: str | Path) -> dict:
    """``ssast evaluate --ensemble RUN``: the ensemble of every saved epoch, re-scored from the prediction files."""
    files = saved_epochs(run_dir)
    if not files:
        raise FileNotFoundError(f"{run_dir}: no {FOLDER}/epoch-*.npz (was it trained with train.epoch_ensemble=true?)")
    total, targets, epochs, split, multilabel = None, None, [], "", False
    for path in files:
        got = read_epoch(path)
        scores = got["scores"].astype(np.float64)
        if total is not None and scores.shape != total.shape:
            raise DataError(f"{path}: {scores.shape} predictions, the other epochs have {total.shape}")
        total = scores if total is None else total + scores
        targets, split, multilabel = got["targets"], got["split"], got["multilabel"]
        epochs.append(got["epoch"])
    return ensemble_metrics(total, len(files), targets, multilabel) | {
        "ensemble_epochs": float(len(files)), "epochs": epochs, "split": split, "num_clips": len(targets)}

