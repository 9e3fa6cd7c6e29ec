"""Pretraining validation as the authors run it: masked accuracy on held-out clips with fixed masks, checked every
plateau_every steps, driving ReduceLROnPlateau(mode=max, patience=2); a held-out share of the training clips when no
data.valid is given (never trained on), stated in the log, and the curve in TensorBoard."""
from __future__ import annotations


import pytest

from ssast.config import load_config
from ssast.data.loader import build_loader, held_out_paths
from ssast.demo.run import make_corpus
from ssast.train.engine import train

TINY = ["model.size=custom", "model.dim=32", "model.depth=1", "model.heads=2", "audio.target_length=64",
        "data.num_workers=0", "data.batch_size=4", "train.progress=lines", "train.precision=fp32",
        "model.mask_patch=0.5", "train.image_every=0", "optim.warmup_steps=0", "train.log_every=2"]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return make_corpus(tmp_path_factory.mktemp("pv"), pool=24, train_per_class=1, test_per_class=1, seconds=0.7)


def test_held_out_clips_are_validation_and_never_training(corpus):
    cfg = load_config(None, [*TINY, f"data.train=[{corpus.pool}]", "optim.schedule=plateau", "data.holdout=0.25"])
    train_keys = {c.path for c in build_loader(cfg, "train").datasets[0].clips}
    valid_keys = {c.path for c in build_loader(cfg, "valid").datasets[0].clips}
    assert valid_keys and train_keys and not (train_keys & valid_keys)
    assert len(train_keys) + len(valid_keys) == 24
    assert valid_keys == held_out_paths(sorted(train_keys | valid_keys), 0.25) and len(valid_keys) == 6
    # a tiny source still gives one validation clip (the recipes' 1% of a handful of clips)
    assert len(held_out_paths([f"c{i}.wav" for i in range(4)], 0.01)) == 1
    # a cosine run needs no validation: nothing is held out
    cos = load_config(None, [*TINY, f"data.train=[{corpus.pool}]", "optim.schedule=cosine"])
    assert len(build_loader(cos, "train").datasets[0].clips) == 24


def test_plateau_checks_validation_masked_accuracy(corpus, tmp_path, capsys):
    import io

    log = io.StringIO()
    run = tmp_path / "run"
    cfg = load_config(None, [*TINY, f"data.train=[{corpus.pool}]", "optim.schedule=plateau", "data.holdout=0.25",
                             "optim.plateau_every=2", "train.steps=12", "optim.lr=1e-9", f"train.run_dir={run}"])
    result = train(cfg, stream=log)
    text = log.getvalue()
    assert "25.0% of the training clips" in text and "held out" in text
    checks = [h for h in result["history"] if h["split"] == "valid"]
    assert [h["step"] for h in checks] == [2, 4, 6, 8, 10, 12]
    assert all(0 <= h["accuracy"] <= 1 for h in checks)
    # with a vanishing lr the model hardly changes: the accuracy stalls, so the lr is halved after 3 flat checks
    from ssast.train.state_io import read_state

    sched = read_state(run / "last")["schedule"]
    assert sched["plateau_scale"] < 1.0
    # the validation curve is in TensorBoard
    from ssast.evaluate.compare import read_scalars

    scalars = read_scalars(run)
    assert "valid/accuracy" in scalars and len(scalars["valid/accuracy"]) == 6
