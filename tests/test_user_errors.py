"""Every user mistake ends in one line `ssast CMD: error: ...` (exit 2, no traceback) that names the key, file or path:
invalid numbers, a missing GPU, unusable data, files that are not checkpoints, unwritable outputs; overrides on either
side of the options; errors say whether the value came from the config file or the command line."""
from __future__ import annotations

import json
import os
import pickle

import pytest
import torch
import yaml

from conftest import make_wav
from ssast.cli import main
from ssast.config import apply_overrides
from ssast.demo.run import make_corpus
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
        code, out, err = run(capsys, "pretrain", "--dry-run", *TINY, f"model.mask_patch={mask}", "train.steps=2",
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


# --- 5c: statistics of a dataset where no clip is usable ----------------------------------------------------------


def test_stats_when_every_clip_is_bad(tmp_path, capsys):
    (tmp_path / "a.wav").write_bytes(b"")
    (tmp_path / "b.wav").write_bytes(b"")
    lst = tmp_path / "empty.json"
    lst.write_text(json.dumps({"data": [{"wav": "a.wav"}, {"wav": "b.wav"}]}))
    line = one_line_error(capsys, "stats", *TINY, f"data.train=[{lst}]")
    assert str(lst) in line and "skipped 2 of 2 clips" in line and "2 empty" in line and "a.wav" in line

    silent = tmp_path / "silent"
    for i in range(3):
        make_wav(silent / f"s{i}.wav", 0.5, amp=0.0)
    line = one_line_error(capsys, "stats", *TINY, f"data.train=[{silent}]")
    assert str(silent) in line and "skipped 3 of 3 clips" in line and "3 silent" in line


def test_stats_of_an_unlabelled_folder_with_a_finetuning_config(corpus, capsys):
    """Statistics read audio only: a folder is fine even where fine-tuning would need labels."""
    code, out, err = run(capsys, "stats", *TINY, "task=finetune", f"data.label_csv={corpus.labels}",
                         f"data.train=[{corpus.root / 'audio'}]")
    assert code == 0, err
    assert json.loads(out)["norm_std"] > 0


# --- 5d: fine-tuning on a folder of audio (no labels) -------------------------------------------------------------


def test_finetune_on_an_unlabelled_folder(corpus, tmp_path, capsys):
    folder = corpus.root / "audio"
    line = one_line_error(capsys, "finetune", *TINY, f"data.train=[{folder}]", f"data.label_csv={corpus.labels}",
                          "train.epochs=1", f"train.run_dir={tmp_path / 'r'}")
    assert str(folder) in line and "labelled JSON clip list" in line


# --- 5e: a file that is not a checkpoint, for model.init or import-checkpoint -----------------------------------


def _not_a_checkpoint(path, kind: str) -> None:
    if kind == "random bytes":
        path.write_bytes(os.urandom(4096))
    elif kind == "pickled dict":
        path.write_bytes(pickle.dumps({"epoch": 3, "names": ["a", "b"]}, protocol=4))
    elif kind == "text":
        path.write_text("these are not weights\n")
    else:  # a readable PyTorch file, but of something else
        torch.save({"optimizer": {"lr": 0.1}, "step": 7}, path)


@pytest.mark.parametrize("kind", ["random bytes", "pickled dict", "text", "torch dict"])
@pytest.mark.parametrize("command", ["import-checkpoint", "finetune"])
def test_a_file_that_is_not_a_checkpoint(command, kind, corpus, tmp_path, capsys):
    bad = tmp_path / "x.pth"
    _not_a_checkpoint(bad, kind)
    if command == "import-checkpoint":
        line = one_line_error(capsys, "import-checkpoint", bad, tmp_path / "out")
        assert not (tmp_path / "out").exists()
    else:
        line = one_line_error(capsys, "finetune", *TINY, f"data.train=[{corpus.train}]",
                              f"data.label_csv={corpus.labels}", "train.epochs=1", f"train.run_dir={tmp_path / 'r'}",
                              f"model.init={bad}")
    assert str(bad) in line and "SSAST/AST checkpoint" in line


# --- 5f: outputs that cannot be written are refused before any work ------------------------------------------------


@pytest.fixture(scope="module")
def finetuned(corpus, tmp_path_factory):
    """A one-epoch tiny fine-tuning run (final model and one step checkpoint) and a config file for it."""
    root = tmp_path_factory.mktemp("ft")
    cfg = root / "finetune.yaml"
    cfg.write_text(yaml.safe_dump(apply_overrides({"task": "finetune"}, [*TINY, f"data.label_csv={corpus.labels}"])))
    run_dir = root / "run"
    args = ["finetune", "-c", cfg, f"data.train=[{corpus.train}]", "train.epochs=1", f"train.run_dir={run_dir}"]
    assert main([str(a) for a in args]) == 0
    return run_dir, cfg


@pytest.fixture
def no_work(monkeypatch):
    """Make every command's real work fail loudly, so a passing test shows the check came first."""
    import ssast.data.shard_writer
    import ssast.evaluate.compare
    import ssast.evaluate.scoring
    import ssast.serve.inference

    def forbidden(*args, **kwargs):
        raise AssertionError("the command started its work before checking its output path")

    for module, name in ((ssast.serve.inference, "embed_files"), (ssast.evaluate.scoring, "evaluate_checkpoint"),
                         (ssast.data.shard_writer, "prepare_shards"), (ssast.evaluate.compare, "compare_runs")):
        monkeypatch.setattr(module, name, forbidden)


def _output_commands(finetuned, corpus, out) -> dict[str, list]:
    run_dir, cfg = finetuned
    wav = next((corpus.root / "audio").glob("test_*.wav"))
    return {
        "embed": ["embed", run_dir / "final", wav, "--out", out],
        "prepare": ["prepare", corpus.pool, out],
        "compare": ["compare", run_dir, "--out", out],
        "evaluate": ["evaluate", run_dir / "final", f"data.test=[{corpus.test}]", "-c", cfg, "--out", out],
    }


@pytest.mark.parametrize("command", ["embed", "prepare", "compare", "evaluate"])
def test_output_under_a_regular_file(command, finetuned, corpus, tmp_path, capsys, no_work):
    blocker = tmp_path / "notes.txt"
    blocker.write_text("a file, not a folder")
    out = blocker / "sub" / ("m.json" if command == "evaluate" else "out")
    line = one_line_error(capsys, *_output_commands(finetuned, corpus, out)[command])
    assert str(out) in line and f"{blocker} is a file" in line


@pytest.mark.parametrize("command", ["embed", "prepare", "compare"])
def test_output_folder_that_is_a_file(command, finetuned, corpus, tmp_path, capsys, no_work):
    out = tmp_path / "taken"
    out.write_text("already here")
    line = one_line_error(capsys, *_output_commands(finetuned, corpus, out)[command])
    assert str(out) in line and "is a file" in line
    assert out.read_text() == "already here"


@pytest.mark.parametrize("command", ["embed", "prepare", "compare", "evaluate"])
def test_output_in_an_unwritable_place(command, finetuned, corpus, tmp_path, capsys, monkeypatch, no_work):
    # Tests run as root, which ignores permission bits: simulate a read-only folder through os.access.
    locked = tmp_path / "locked"
    locked.mkdir()
    real_access = os.access
    monkeypatch.setattr(os, "access", lambda p, mode, **kw: str(p) != str(locked) and real_access(p, mode, **kw))
    out = locked / ("m.json" if command == "evaluate" else "out")
    line = one_line_error(capsys, *_output_commands(finetuned, corpus, out)[command])
    assert str(out) in line and "not writable" in line


def test_evaluate_out_that_is_a_folder(finetuned, corpus, tmp_path, capsys, no_work):
    line = one_line_error(capsys, *_output_commands(finetuned, corpus, tmp_path)["evaluate"])
    assert f"--out {tmp_path}" in line and "is a folder" in line


@pytest.mark.parametrize("command", ["pretrain", "finetune"])
@pytest.mark.parametrize("dry_run", [[], ["--dry-run"]])
def test_run_dir_that_is_a_file(command, dry_run, corpus, tmp_path, capsys):
    run_dir = tmp_path / "run"
    run_dir.write_text("not a run")
    data = [f"data.train=[{corpus.pool}]", "train.steps=1"] if command == "pretrain" else [
        f"data.train=[{corpus.train}]", f"data.label_csv={corpus.labels}", "train.epochs=1"]
    line = one_line_error(capsys, command, *dry_run, *PRETRAIN, *data, f"train.run_dir={run_dir}")
    assert f"train.run_dir {run_dir}" in line and "is a file" in line
    assert run_dir.read_text() == "not a run"


# --- 7: the README's command forms: checkpoints and overrides on either side of the options ----------------------


def test_evaluate_as_the_readme_writes_it(finetuned, corpus, tmp_path, capsys):
    run_dir, cfg = finetuned
    step = sorted((run_dir / "checkpoints").glob("step-*"))[-1]
    # ssast evaluate RUN/final [RUN/checkpoints/step-N ...] -c CONFIG data.test=[list.json]
    code, out, err = run(capsys, "evaluate", run_dir / "final", step, "-c", cfg, f"data.test=[{corpus.test}]")
    assert code == 0, err
    metrics = json.loads(out)
    assert metrics["ensemble_of"] == 2 and [s["checkpoint"] for s in metrics["single"]] == [
        str(run_dir / "final"), str(step)]
    # a checkpoint after the options too, and --out in between
    code, out, err = run(capsys, "evaluate", run_dir / "final", "-c", cfg, "--out", tmp_path / "m.json", step,
                         f"data.test=[{corpus.test}]")
    assert code == 0, err
    assert json.loads((tmp_path / "m.json").read_text())["ensemble_of"] == 2


@pytest.mark.parametrize("command", ["pretrain", "finetune"])
def test_overrides_before_and_after_the_config(command, finetuned, tmp_path, capsys):
    _, cfg = finetuned
    code, out, err = run(capsys, command, "optim.lr=3e-4", "-c", cfg, "--dry-run", "data.batch_size=5",
                         "model.mask_patch=0.5", "train.steps=2", "train.epochs=1", f"train.run_dir={tmp_path / 'r'}")
    assert code == 0, err
    dumped = yaml.safe_load(out.split("\nmodel: ")[0])
    assert dumped["task"] == command and dumped["optim"]["lr"] == 3e-4 and dumped["data"]["batch_size"] == 5


def test_unknown_options_are_still_refused(capsys):
    with pytest.raises(SystemExit) as e:
        run(capsys, "pretrain", "--dry-run", "--no-such-option", *TINY)
    assert e.value.code == 2 and "unrecognized arguments: --no-such-option" in capsys.readouterr().err


# --- 10: clips dropped from an evaluation or from prepare are reported, never silent ------------------------------


def test_bad_clips_in_evaluation_and_prepare_are_reported(corpus, tmp_path, capsys):
    # a test list with two unusable clips beside the good ones
    bad_dir = tmp_path / "bad"
    bad_dir.mkdir()
    (bad_dir / "empty.wav").write_bytes(b"")
    make_wav(bad_dir / "silent.wav", 0.7, amp=0.0)
    good = json.loads(corpus.test.read_text())["data"]
    mid = good[0]["labels"]
    entries = [{**e, "wav": str(corpus.root / e["wav"])} for e in good]
    entries += [{"wav": str(bad_dir / "empty.wav"), "labels": mid}, {"wav": str(bad_dir / "silent.wav"), "labels": mid}]
    test_list = tmp_path / "test.json"
    test_list.write_text(json.dumps({"data": entries}))

    ft = tmp_path / "ft"
    code, _, err = run(capsys, "finetune", *TINY, f"data.train=[{corpus.train}]", f"data.test=[{test_list}]",
                       f"data.label_csv={corpus.labels}", "train.epochs=1", f"train.run_dir={ft}")
    assert code == 0, err
    metrics = json.loads((ft / "metrics.json").read_text())
    note = f"test: skipped 2 of {len(entries)} clips: 1 empty, 1 silent"
    assert metrics["final_skipped_clips"].startswith(note)

    code, out, err = run(capsys, "evaluate", ft / "final", *TINY, f"data.test=[{test_list}]",
                         f"data.label_csv={corpus.labels}")
    assert code == 0, err
    assert json.loads(out)["num_clips"] == len(good)
    assert json.loads(out)["skipped_clips"].startswith(f"data.test: skipped 2 of {len(entries)} clips")
    assert "evaluate: data.test: skipped 2" in err

    code, out, err = run(capsys, "prepare", test_list, tmp_path / "shards", "--label-csv", corpus.labels,
                         "--workers", "1")
    assert code == 0, err
    assert f"wrote 1 shards, {len(good)} clips" in out
    assert f"skipped 2 of {len(entries)} clips: 1 empty, 1 silent; first: " in out
