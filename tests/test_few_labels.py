"""Fine-tuning on small labelled sets: train.min_steps raises the epochs so that a few clips still get enough
optimiser steps, such a run validates and saves as often as its configured epochs would, and a short run without it
is warned about with its step count."""
from __future__ import annotations

import pytest

from ssast.config import load_config
from ssast.demo.run import make_corpus
from ssast.train.engine import train
from ssast.train.tasks import FEW_LABEL_MIN_STEPS, FinetuneTask

TINY = [
    "model.size=custom", "model.dim=32", "model.depth=2", "model.heads=2", "model.input_tdim=64",
    "audio.target_length=64", "data.num_workers=0", "train.progress=none", "train.precision=fp32",
    "optim.warmup_steps=2",
]


def task_for(*overrides) -> FinetuneTask:
    cfg = load_config(None, ["task=finetune", *TINY, *overrides])
    return FinetuneTask(cfg, rt=None, labels=None)


def test_min_steps_raises_the_epochs_to_reach_it():
    task = task_for("train.epochs=3", "train.min_steps=10")
    assert task.length(batches_per_epoch=2, accum=1, exact=True) == (10, 2, False)
    assert task.epochs == 5
    assert "raised from 3 to 5" in task.notes[0]


def test_enough_epochs_are_left_alone():
    task = task_for("train.epochs=30", "train.min_steps=10")
    assert task.length(batches_per_epoch=2, accum=1, exact=True) == (60, 2, False)
    assert task.epochs == 30 and not task.notes


def test_a_short_run_without_min_steps_is_warned_about():
    task = task_for("train.epochs=3")
    steps, _, _ = task.length(batches_per_epoch=2, accum=2, exact=True)
    assert steps == 3
    assert len(task.notes) == 1 and "only 3 optimiser steps" in task.notes[0]
    assert f"train.min_steps={FEW_LABEL_MIN_STEPS}" in task.notes[0]
    long = task_for("train.epochs=3")
    long.length(batches_per_epoch=FEW_LABEL_MIN_STEPS, accum=1, exact=True)
    assert not long.notes


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return make_corpus(tmp_path_factory.mktemp("few"), pool=0, train_per_class=1, test_per_class=1, seconds=0.7)


def test_a_raised_run_trains_the_steps_and_validates_as_often_as_configured(corpus, tmp_path, capsys):
    # 6 clips, batch 6: one step per epoch; 3 epochs configured, 12 steps asked -> 12 epochs, validated every 4
    res = train(load_config(None, ["task=finetune", *TINY, f"data.train=[{corpus.train}]",
                                   f"data.valid=[{corpus.test}]", f"data.label_csv={corpus.labels}",
                                   "data.batch_size=6", "train.epochs=3", "train.min_steps=12",
                                   "train.progress=lines", f"train.run_dir={tmp_path / 'run'}"]))
    assert res["steps"] == 12 and res["epochs"] == 12
    assert [h["epoch"] for h in res["history"] if h["split"] == "valid"] == [4, 8, 12]
    assert "train.epochs raised from 3 to 12" in capsys.readouterr().err
