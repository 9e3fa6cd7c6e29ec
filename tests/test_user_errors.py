"""Every user mistake ends in one line `ssast CMD: error: ...` (exit 2, no traceback) that names the key, file or path:
invalid numbers, a missing GPU, unusable data, files that are not checkpoints, unwritable outputs; overrides on either
side of the options; errors say whether the value came from the config file or the command line."""
from __future__ import annotations

import pytest
import torch

from ssast.demo import make_corpus
from test_cli import TINY, run

PRETRAIN = [*TINY, "model.mask_patch=0.5"]  # the TINY grid has 8x4 = 32 tokens


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return make_corpus(tmp_path_factory.mktemp("errors"), pool=12, train_per_class=2, test_per_class=1, seconds=0.7)


def one_line_error(capsys, *args) -> str:
    """Run the command; assert it failed as a user error (exit 2, a single stderr line, no traceback); the line."""
    code, _, err = run(capsys, *args)
    lines = err.strip().splitlines()
    assert code == 2, err
    assert len(lines) == 1 and "Traceback" not in err, err
    assert lines[0].startswith(f"ssast {args[0]}: error: "), err
    return lines[0]


# --- 5a: numbers that cannot work are refused by validate(), so --dry-run refuses them too ----------------------


@pytest.mark.parametrize("overrides, key, value", [
    (["optim.lr=0"], "optim.lr", "0"),
    (["optim.lr=-1e-4"], "optim.lr", "-0.0001"),
    (["optim.lr=nan"], "optim.lr", "nan"),
    (["optim.lr=.inf"], "optim.lr", "inf"),
    (["model.mask_patch=33"], "model.mask_patch", "33"),  # more than the 32 tokens
    (["model.mask_patch=32"], "model.mask_patch", "32"),  # all of them: the encoder would see no input
    (["model.mask_patch=0.99"], "model.mask_patch", "0.99"),  # rounds to all 32
    (["train.log_every=0"], "train.log_every", "0"),
    (["train.ckpt_every=0"], "train.ckpt_every", "0"),
    (["train.max_bad_steps=0"], "train.max_bad_steps", "0"),
    (["train.keep_last=0"], "train.keep_last", "0"),
    (["optim.warmup_steps=-5"], "optim.warmup_steps", "-5"),
    (["optim.schedule=step", "optim.step_every=0"], "optim.step_every", "0"),
    (["augment.mixup=0.5", "augment.mixup_alpha=0"], "augment.mixup_alpha", "0"),
])
def test_invalid_numbers_are_refused_before_the_run(overrides, key, value, tmp_path, capsys):
    line = one_line_error(capsys, "pretrain", "--dry-run", *PRETRAIN, f"train.run_dir={tmp_path / 'r'}", *overrides)
    assert key in line and value in line
    assert "command-line override" in line


def test_valid_mask_counts_and_fractions_pass(tmp_path, capsys):
    for mask in ("0.5", "31", "1"):
        code, out, err = run(capsys, "pretrain", "--dry-run", *TINY, f"model.mask_patch={mask}",
                             f"train.run_dir={tmp_path / 'r'}")
        assert code == 0, err
        assert "grid 8x4 = 32 tokens" in out


# --- 12a: the error says where the bad value came from -------------------------------------------------------------


def test_errors_name_where_the_value_came_from(tmp_path, capsys):
    cfg = tmp_path / "pretrain.yaml"
    cfg.write_text("optim:\n  warmup_steps: lots\n")
    line = one_line_error(capsys, "pretrain", "-c", cfg, "--dry-run", *PRETRAIN)
    assert "optim.warmup_steps" in line and "'lots'" in line and line.endswith(f"(in {cfg})")

    cfg.write_text("optim:\n  warmup_steps: 10\n")
    line = one_line_error(capsys, "pretrain", "-c", cfg, "--dry-run", *PRETRAIN, "optim.warmup_steps=abc")
    assert "'abc'" in line and line.endswith("(from the command-line override optim.warmup_steps=abc)")
    assert str(cfg) not in line

    # a cross-field error where the file and an override both contributed
    cfg.write_text("model:\n  input_tdim: 512\n")
    line = one_line_error(capsys, "pretrain", "-c", cfg, "--dry-run", "audio.target_length=256")
    assert "model.input_tdim=512" in line and "audio.target_length=256" in line
    assert line.endswith(f"(in {cfg}, with the command-line override audio.target_length=256)")


# --- 5b: a GPU asked for where there is none ----------------------------------------------------------------------


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without a CUDA GPU")
@pytest.mark.parametrize("device", ["cuda", "cuda:1"])
def test_cuda_device_without_a_gpu(device, corpus, tmp_path, capsys):
    line = one_line_error(capsys, "pretrain", *PRETRAIN, f"data.train=[{corpus.pool}]", "train.steps=1",
                          f"train.device={device}", f"train.run_dir={tmp_path / 'r'}")
    assert f"train.device={device}" in line and "no CUDA device" in line and "train.device=cpu" in line
