"""train.epoch_ensemble: the running ensemble of the epochs' predictions (the authors' cum_mAP / cum_acc), logged to
TensorBoard and metrics.json, and reproduced by `ssast evaluate` from the run's saved predictions and from its kept
per-epoch checkpoints."""
from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from ssast.config import ConfigError
from ssast.train.engine import train
from test_engine import REPO, corpus, finetune_cfg, scalars  # noqa: F401  (corpus is a fixture)


def _evaluate(*args: str) -> dict:
    proc = subprocess.run([sys.executable, "-m", "ssast", "evaluate", *args], capture_output=True, text=True,
                          cwd=REPO)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


@pytest.fixture(scope="module")
def run(corpus, tmp_path_factory):  # noqa: F811
    """Three epochs, multi-label, every epoch's checkpoint kept."""
    run = tmp_path_factory.mktemp("ens") / "run"
    res = train(finetune_cfg(corpus, run, "data.multilabel=true", "train.epochs=3", "train.epoch_ensemble=true",
                             "train.keep_last=10", "optim.lr=3e-3"))
    return run, res


def test_the_running_ensemble_is_logged_per_epoch(run):
    run_dir, res = run
    history = json.loads((run_dir / "metrics.json").read_text())["history"]
    ens = [h for h in history if h["split"] == "valid_ensemble"]
    single = [h for h in history if h["split"] == "valid"]
    assert [h["epoch"] for h in ens] == [1, 2, 3] and [h["ensemble_epochs"] for h in ens] == [1.0, 2.0, 3.0]
    # one epoch's ensemble is that epoch's model; later ones are the mean of the epochs so far, not the last model
    assert ens[0]["ensemble_mAP"] == pytest.approx(single[0]["mAP"], abs=1e-6)
    assert res["final"]["ensemble_mAP"] == ens[-1]["ensemble_mAP"]
    board = scalars(run_dir)
    assert [round(v, 6) for _, v in board["valid/ensemble_mAP"]] == [round(h["ensemble_mAP"], 6) for h in ens]


def test_the_ensemble_is_the_mean_of_the_epochs_predictions(run):
    from sklearn.metrics import average_precision_score

    from ssast.train.epoch_ensemble import read_epoch, saved_epochs

    run_dir, _ = run
    epochs = [read_epoch(p) for p in saved_epochs(run_dir)]
    assert [e["epoch"] for e in epochs] == [1, 2, 3]
    assert not np.allclose(epochs[0]["scores"], epochs[2]["scores"])  # the epochs really differ
    mean = np.mean([e["scores"] for e in epochs[:2]], axis=0)
    y = epochs[0]["targets"] > 0.5
    aps = [average_precision_score(y[:, c], mean[:, c]) for c in range(y.shape[1]) if 0 < y[:, c].sum() < len(y)]
    history = json.loads((run_dir / "metrics.json").read_text())["history"]
    logged = [h for h in history if h["split"] == "valid_ensemble"][1]["ensemble_mAP"]
    assert logged == pytest.approx(np.mean(aps), abs=1e-9)


def test_ssast_evaluate_reproduces_the_logged_figure(run, corpus):  # noqa: F811
    run_dir, res = run
    logged = res["final"]["ensemble_mAP"]
    # from the saved predictions
    again = _evaluate("--ensemble", str(run_dir))
    assert again["ensemble_mAP"] == pytest.approx(logged, abs=1e-12) and again["epochs"] == [1, 2, 3]
    # from the weights: the epochs' checkpoints the prediction files name, through the ordinary ensemble evaluation
    from ssast.train.epoch_ensemble import read_epoch, saved_epochs

    ckpts = [str(run_dir / read_epoch(p)["checkpoint"]) for p in saved_epochs(run_dir)]
    assert len(set(ckpts)) == 3
    weights = _evaluate(*ckpts, "-c", str(run_dir / "config.yaml"), f"data.test=[{corpus.test}]")
    assert weights["ensemble_of"] == 3 and weights["mAP"] == pytest.approx(logged, abs=1e-5)


def test_a_resumed_run_continues_the_running_mean(corpus, tmp_path):  # noqa: F811
    whole = train(finetune_cfg(corpus, tmp_path / "whole", "train.epochs=3", "train.epoch_ensemble=true"))
    train(finetune_cfg(corpus, tmp_path / "cut", "train.epochs=2", "train.epoch_ensemble=true"))
    resumed = train(finetune_cfg(corpus, tmp_path / "cut", "train.epochs=3", "train.epoch_ensemble=true"),
                    resume=str(tmp_path / "cut"))
    assert resumed["final"]["ensemble_epochs"] == 3.0
    assert resumed["final"]["ensemble_accuracy"] == pytest.approx(whole["final"]["ensemble_accuracy"])


def test_user_errors_are_one_line(corpus, tmp_path):  # noqa: F811
    with pytest.raises(ConfigError, match="train.epoch_ensemble"):
        finetune_cfg(corpus, tmp_path / "r", "train.epoch_ensemble=true", "data.valid=[]")
    proc = subprocess.run([sys.executable, "-m", "ssast", "evaluate", "--ensemble", str(tmp_path)],
                          capture_output=True, text=True, cwd=REPO)
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1 and "epoch_ensemble" in proc.stderr
