"""Fine-tuning reads finite WebDataset shard sets epoch by epoch (AudioSet users keep their data in shards):
labels come from the shards `ssast prepare` writes, an epoch ends when the shards do, class-balanced sampling works by
weight, and a resumed run equals an uninterrupted one."""
from __future__ import annotations

import json

import pytest
import torch

from ssast.cli import main
from ssast.demo.run import make_corpus
from ssast.models.checkpoint import load_state
from ssast.train.state_io import read_state

TINY = ["model.size=custom", "model.dim=32", "model.depth=1", "model.heads=2", "model.input_tdim=64",
        "audio.target_length=64", "data.num_workers=0", "data.batch_size=4", "train.progress=none",
        "train.precision=fp32", "optim.warmup_steps=0", "data.shuffle_buffer=8"]


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    root = tmp_path_factory.mktemp("ftshards")
    corpus = make_corpus(root / "corpus", pool=0, train_per_class=4, test_per_class=1, seconds=0.7)
    out = root / "shards"
    assert main(["prepare", str(corpus.train), str(out), "--label-csv", str(corpus.labels), "--shard-size", "7",
                 "--workers", "1"]) == 0
    return corpus, out


def finetune(capsys, corpus, shards, run, *extra) -> int:
    code = main(["finetune", *TINY, f"data.train=[{shards}]", f"data.test=[{corpus.test}]",
                 f"data.label_csv={corpus.labels}", f"train.run_dir={run}", *map(str, extra)])
    assert code == 0, capsys.readouterr().err
    return code


def test_finetune_on_shards_runs_whole_epochs_and_resumes_exactly(shards, tmp_path, capsys):
    corpus, out = shards
    index = json.loads((out / "index.json").read_text())
    assert index["num_clips"] == 24 and len(index["shards"]) == 4
    assert json.loads((out / "shard-000000.json").read_text())["labels"]  # prepare wrote the labels

    finetune(capsys, corpus, out, tmp_path / "straight", "train.epochs=3")
    metrics = json.loads((tmp_path / "straight" / "metrics.json").read_text())
    assert metrics["epochs"] == 3 and metrics["steps"] == 3 * 6  # 24 clips / batch 4 = 6 steps per epoch

    finetune(capsys, corpus, out, tmp_path / "split", "train.epochs=1")
    assert read_state(tmp_path / "split" / "last")["epoch"] == 1
    assert main(["finetune", "--resume", str(tmp_path / "split"), "train.epochs=3"]) == 0, capsys.readouterr().err
    a, b = load_state(tmp_path / "straight" / "final"), load_state(tmp_path / "split" / "final")
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_finetune_on_shards_with_class_balanced_sampling(shards, tmp_path, capsys):
    corpus, out = shards
    finetune(capsys, corpus, out, tmp_path / "bal", "train.epochs=2", "data.balanced_sampling=true")
    metrics = json.loads((tmp_path / "bal" / "metrics.json").read_text())
    # balanced classes: every factor is 1, so an epoch still holds about 24 clips
    assert metrics["epochs"] == 2 and 2 * 5 <= metrics["steps"] <= 2 * 7
