"""A run folder is the user's data (issue 25): a new run never replaces a run (--resume, another train.run_dir or
--overwrite, which never mixes two runs); a refused or failed start writes nothing; the engine writes only real paths
inside its folder; a crafted trainer state is one line; a resume never reads model.init again; every split is checked
before the first step; every command that writes fails on a full or read-only disk in one line, leaving no partial
file; unrelated outputs are not replaced; values that slip through and small defects are each one line.
(`pytest tests/test_data_safety.py` reruns the issue's whole list across the commands.)"""
from __future__ import annotations

import errno
import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest
import torch
import yaml

from conftest import make_wav
from ssast.cli import main
from ssast.config import apply_overrides
from ssast.demo.run import make_corpus
from ssast.train.state_io import STATE
from test_resume_safety import TINY, one_line, tree_digest

REPO = Path(__file__).resolve().parent.parent
FT = [a for a in TINY if not a.startswith("model.mask_patch")]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return make_corpus(tmp_path_factory.mktemp("ds"), pool=12, train_per_class=2, test_per_class=1, seconds=0.7)


def cli(capsys, *args) -> tuple[int, str]:
    code = main([str(a) for a in args])
    return code, capsys.readouterr().err


@pytest.fixture(scope="module")
def pt_run(corpus, tmp_path_factory):
    """A finished 4-step pretraining run, checkpoints at steps 2 and 4 (tests copy it before changing it)."""
    run = tmp_path_factory.mktemp("pt") / "pt"
    assert main(["pretrain", *TINY, f"data.train=[{corpus.pool}]", f"train.run_dir={run}", "train.steps=4",
                 "train.ckpt_every=2"]) == 0
    return run


@pytest.fixture(scope="module")
def ft_cfg(corpus, tmp_path_factory):
    cfg = tmp_path_factory.mktemp("cfg") / "ft.yaml"
    cfg.write_text(yaml.safe_dump(apply_overrides({"task": "finetune"}, [
        *FT, f"data.label_csv={corpus.labels}", f"data.train=[{corpus.train}]", "train.epochs=1"])))
    return cfg


def copy_run(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst, symlinks=True)
    return dst


def steps_of(run: Path) -> list[str]:
    return sorted(p.name for p in (run / "checkpoints").iterdir())


# --- 1: a new run never replaces a run ---------------------------------------------------------------------------


def test_a_new_run_refuses_a_folder_that_holds_a_run(pt_run, ft_cfg, tmp_path, capsys):
    ow = copy_run(pt_run, tmp_path / "ow")
    before = tree_digest(ow)
    code, err = cli(capsys, "finetune", "-c", ft_cfg, f"train.run_dir={ow}")
    line = one_line(err)
    assert code == 2 and str(ow) in line
    assert f"--resume {ow}" in line and "another train.run_dir" in line and "--overwrite" in line
    assert tree_digest(ow) == before
    code, err = cli(capsys, "pretrain", "--resume", ow, "train.steps=6")  # the pretraining run lives on
    assert code == 0, err


def test_overwrite_replaces_the_run_without_mixing_checkpoints(pt_run, ft_cfg, corpus, tmp_path, capsys):
    ow = copy_run(pt_run, tmp_path / "ow")
    (ow / "notes.txt").write_text("the user's own file")
    other = copy_run(pt_run, tmp_path / "other")
    shutil.rmtree(ow / "tb")
    os.symlink(other / "tb", ow / "tb")  # a link among the old run's entries is unlinked, never followed
    other_before = tree_digest(other)
    code, err = cli(capsys, "finetune", "-c", ft_cfg, f"train.run_dir={ow}", "--overwrite")
    assert code == 0, err
    assert "removed the earlier run's" in err
    ckpts = steps_of(ow)
    assert ckpts and all(json.loads((ow / "checkpoints" / c / "model.json").read_text())["task"] == "finetune"
                         for c in ckpts)
    assert json.loads((ow / "final" / "model.json").read_text())["kind"] == "classifier"
    assert json.loads((ow / "metrics.json").read_text())["task"] == "finetune"
    assert (ow / "notes.txt").read_text() == "the user's own file"
    assert not (ow / "tb").is_symlink() and tree_digest(other) == other_before


def test_resume_and_overwrite_exclude_each_other(pt_run, tmp_path, capsys):
    code, err = cli(capsys, "pretrain", "--resume", pt_run, "--overwrite")
    assert code == 2 and "--overwrite" in one_line(err)


def test_recipes_choose_their_rerun_policy(tmp_path):
    """The recipe scripts resume a run with a checkpoint (--resume RUN_DIR); without one they pass --resume auto, which
    starts again a start of this same run that died before its first checkpoint and refuses another run's folder."""
    run_dir = tmp_path / "r"
    run_dir.mkdir()
    (run_dir / "config.yaml").write_text("task: pretrain\n")  # a start that died before its first checkpoint
    env = dict(os.environ, DRY_RUN="1", RUN_DIR=str(run_dir), PYTHON=os.sys.executable)
    out = subprocess.run(["bash", str(REPO / "pretrain/run_single_gpu.sh"), "patch", "tiny"], env=env,
                         capture_output=True, text=True)
    assert "--resume auto" in out.stdout and "--overwrite" not in out.stdout, out.stderr
    (run_dir / "checkpoints" / "step-00000002").mkdir(parents=True)
    (run_dir / "last").symlink_to("checkpoints/step-00000002")
    out = subprocess.run(["bash", str(REPO / "pretrain/run_single_gpu.sh"), "patch", "tiny"], env=env,
                         capture_output=True, text=True)
    assert f"--resume {run_dir}" in out.stdout and "--overwrite" not in out.stdout
    script = (f"source {REPO / 'finetune/common.sh'}; PYTHON=python; finetune_run cfg.yaml {run_dir}")
    out = subprocess.run(["bash", "-c", script], env=dict(env, RERUN="1"), capture_output=True, text=True)
    assert "--overwrite" in out.stdout and "--resume" not in out.stdout, out.stderr


def test_the_demo_reruns_into_its_own_folders(monkeypatch, tmp_path):
    """The demo's policy is overwrite: every train() it makes passes overwrite=True."""
    import ssast.demo.run as demo
    import ssast.train.engine as engine

    calls = []

    class Stop(Exception):
        pass

    def fake_train(cfg, **kw):
        calls.append(kw)
        raise Stop

    monkeypatch.setattr(engine, "train", fake_train)
    monkeypatch.setattr(demo, "make_corpus", lambda *a, **k: make_corpus(tmp_path / "c", pool=4, train_per_class=2,
                                                                          test_per_class=1, seconds=0.3))
    with pytest.raises(Stop):
        demo.run_demo(tmp_path / "demo", quick=True)
    assert calls and all(kw.get("overwrite") is True for kw in calls)


# --- 2: nothing is written until every check has passed -----------------------------------------------------------


def test_a_failed_start_writes_nothing(pt_run, corpus, tmp_path, capsys):
    fresh = tmp_path / "fresh"
    code, err = cli(capsys, "pretrain", *TINY, f"data.train=[{tmp_path / 'typo_dir'}]", f"train.run_dir={fresh}",
                    "train.steps=2")
    assert code == 2 and "typo_dir" in one_line(err) and not fresh.exists()
    cc = copy_run(pt_run, tmp_path / "cc")
    before = tree_digest(cc)
    code, err = cli(capsys, "pretrain", *TINY, f"data.train=[{tmp_path / 'typo_dir'}]", "model.dim=64",
                    f"train.run_dir={cc}", "train.steps=2", "--overwrite")
    assert code == 2 and "typo_dir" in one_line(err)
    assert tree_digest(cc) == before  # the overwrite had not begun: the old run is whole
    code, err = cli(capsys, "pretrain", "--resume", cc, f"data.valid=[{tmp_path / 'typo.json'}]")
    assert code == 2 and tree_digest(cc) == before
    assert cli(capsys, "pretrain", "--resume", cc, "train.steps=6")[0] == 0


# --- 3: links among the run's own entries are refused --------------------------------------------------------------


@pytest.mark.parametrize("entry", ["checkpoints", ".lock", "log.txt", "tb", "final", "config.yaml", "metrics.json",
                                   "checkpoints/step-00000002", "last"])
def test_a_link_among_the_runs_entries_is_refused(entry, pt_run, tmp_path, capsys):
    run = copy_run(pt_run, tmp_path / "run")
    other = copy_run(pt_run, tmp_path / "other")
    target = other / ("checkpoints/step-00000004" if entry == "last" else entry)
    if entry == ".lock":
        target = tmp_path / "precious.txt"
        target.write_text("precious")
    p = run / entry
    if p.is_dir() and not p.is_symlink():
        shutil.rmtree(p)
    elif p.exists() or p.is_symlink():
        p.unlink()
    os.symlink(target, p)
    before = tree_digest(other)
    code, err = cli(capsys, "pretrain", "--resume", run, "train.steps=10", "train.keep_last=1")
    line = one_line(err)
    assert code == 2 and str(p) in line and "symbolic link" in line
    assert tree_digest(other) == before
    if entry == ".lock":
        assert target.read_text() == "precious"


# --- 4: the trainer state is checked against its schema ------------------------------------------------------------


@pytest.mark.parametrize("field, value", [
    ("rng", "garbage"), ("step", "x"), ("step", -3), ("epoch", 1.5), ("elapsed", "soon"), ("history", {"a": 1}),
    ("optimizer", {"state": {"0": {"exp_avg": {"$ndarray": [1.0, 2.0], "dtype": "float32"}}}, "param_groups": []}),
    ("gen", [1, 2, 3]), ("task", None),
])
def test_a_crafted_trainer_state_is_one_line_naming_the_field(field, value, pt_run, tmp_path, capsys):
    run = copy_run(pt_run, tmp_path / "run")
    f = run / "checkpoints" / "step-00000004" / STATE
    doc = json.loads(f.read_text())
    doc["state"][field] = value
    f.write_text(json.dumps(doc))
    before = steps_of(run)
    code, err = cli(capsys, "pretrain", "--resume", run, "train.steps=6")
    line = one_line(err)
    assert code == 2 and repr(field) in line and str(f) in line
    assert steps_of(run) == before


def test_an_optimiser_state_that_does_not_fit_is_one_line(pt_run, tmp_path, capsys):
    run = copy_run(pt_run, tmp_path / "run")
    f = run / "checkpoints" / "step-00000004" / STATE
    doc = json.loads(f.read_text())
    doc["state"]["optimizer"]["param_groups"] = []  # well-formed, but not this model's
    f.write_text(json.dumps(doc))
    code, err = cli(capsys, "pretrain", "--resume", run, "train.steps=6")
    assert code == 2 and "optimizer does not fit" in one_line(err)


# --- 5: a resume never needs model.init --------------------------------------------------------------------------


def test_resuming_a_finetuning_run_does_not_read_model_init(pt_run, ft_cfg, tmp_path, capsys, monkeypatch):
    work = tmp_path / "work"
    shutil.copytree(pt_run / "final", work / "pt_final")
    monkeypatch.chdir(work)
    code, err = cli(capsys, "finetune", "-c", ft_cfg, "model.init=pt_final", "train.run_dir=ft")  # relative
    assert code == 0, err
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    code, err = cli(capsys, "finetune", "--resume", work / "ft", "train.epochs=2")
    assert code == 0, err
    assert json.loads((work / "ft" / "metrics.json").read_text())["epochs"] == 2


# --- 6: every split is checked before the first step ----------------------------------------------------------------


@pytest.fixture(scope="module")
def bad_lists(corpus, tmp_path_factory):
    root = tmp_path_factory.mktemp("bad")
    bad = root / "garbage.wav"
    bad.write_bytes(b"not audio at all" * 40)
    label = json.loads(Path(corpus.test).read_text())["data"][0]["labels"]
    only_bad = root / "only_bad.json"
    only_bad.write_text(json.dumps({"data": [{"wav": str(bad), "labels": label}] * 3}))
    empty = root / "empty.json"
    empty.write_text(json.dumps({"data": []}))
    return only_bad, empty


def test_evaluate_on_an_empty_or_all_bad_list(pt_run, ft_cfg, bad_lists, corpus, tmp_path, capsys):
    run = tmp_path / "ft"
    assert cli(capsys, "finetune", "-c", ft_cfg, f"train.run_dir={run}")[0] == 0
    only_bad, empty = bad_lists
    code, err = cli(capsys, "evaluate", run / "final", "-c", ft_cfg, f"data.test=[{only_bad}]")
    line = one_line(err)
    assert code == 2 and "data.test" in line and "3 of 3" in line and "corrupt" in line
    code, err = cli(capsys, "evaluate", run / "final", "-c", ft_cfg, f"data.test=[{empty}]")
    assert code == 2 and "no clips" in one_line(err)


@pytest.mark.parametrize("split, which", [("test", 0), ("valid", 1), ("train", 1)])
def test_finetuning_checks_every_split_before_the_first_step(split, which, ft_cfg, bad_lists, tmp_path, capsys):
    run = tmp_path / "run"
    code, err = cli(capsys, "finetune", "-c", ft_cfg, f"train.run_dir={run}", f"data.{split}=[{bad_lists[which]}]")
    line = one_line(err)
    assert code == 2 and f"data.{split}" in line
    assert not run.exists()  # refused before any epoch, and before anything was written


def test_probe_lists_are_checked_before_embedding(pt_run, ft_cfg, bad_lists, corpus, tmp_path, capsys, monkeypatch):
    import ssast.evaluate.probe as probe

    embedded = []
    real = probe.embed_loader
    monkeypatch.setattr(probe, "embed_loader", lambda *a, **k: embedded.append(1) or real(*a, **k))
    code, err = cli(capsys, "probe", pt_run / "final", "-c", ft_cfg, f"data.probe_train=[{corpus.train}]",
                    f"data.probe_test=[{bad_lists[0]}]", "--out", tmp_path / "p", "--no-cache")
    line = one_line(err)
    assert code == 2 and "data.probe_test" in line and "3 of 3" in line and "corrupt" in line
    assert embedded == []  # the bad test list stopped the probe before the training list was embedded
    assert not (tmp_path / "p" / "probe.json").exists()


# --- 7: full, read-only and not-a-folder targets -----------------------------------------------------------------


@pytest.fixture
def full_disk(monkeypatch):
    """Every write of an output fails as on a full disk: the atomic writer's fsync, and safetensors' own writer."""
    import safetensors.torch

    import ssast.atomic

    def enospc(*a, **k):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(ssast.atomic.os, "fsync", enospc)
    real_save = safetensors.torch.save_file

    def half_save(tensors, filename, metadata=None):
        Path(filename).write_bytes(b"\0" * 16)  # a partly written file, then the disk is full
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), filename)

    monkeypatch.setattr(safetensors.torch, "save_file", half_save)
    return real_save


@pytest.fixture(scope="module")
def classifier(corpus, ft_cfg, tmp_path_factory):
    run = tmp_path_factory.mktemp("clf") / "run"
    assert main(["finetune", "-c", str(ft_cfg), f"train.run_dir={run}"]) == 0
    return run


@pytest.fixture(scope="module")
def authors_pth(tmp_path_factory):
    from test_authors_import import authors_state

    f = tmp_path_factory.mktemp("pth") / "SSAST-Tiny-Patch-400.pth"
    torch.save(authors_state(128, 2, 16, 16, 2 * 4, pretrain=True, p_input=(32, 64)), f)
    return f


def _writers(classifier, ft_cfg, corpus, authors_pth, out: Path) -> dict[str, list]:
    wav = next((corpus.root / "audio").glob("test_*.wav"))
    return {
        "embed": ["embed", classifier / "final", wav, "--out", out],
        "evaluate": ["evaluate", classifier / "final", "-c", ft_cfg, f"data.test=[{corpus.test}]", "--out",
                     out / "m.json"],
        "predict": ["predict", classifier / "final", wav, "--timeline", out / "t.json"],
        "export": ["export", classifier / "final", out / "m.onnx", "--format", "onnx"],
        "import-checkpoint": ["import-checkpoint", authors_pth, out / "imported"],
        "probe": ["probe", classifier / "final", "-c", ft_cfg, f"data.probe_train=[{corpus.train}]",
                  f"data.probe_test=[{corpus.test}]", "--out", out, "--no-cache"],
        "prepare": ["prepare", corpus.pool, out, "--workers", "0"],
    }


WRITERS = ["embed", "evaluate", "predict", "export", "import-checkpoint", "probe", "prepare"]


@pytest.mark.parametrize("command", WRITERS)
def test_a_full_disk_is_one_line_and_leaves_no_partial_file(command, classifier, ft_cfg, corpus, authors_pth,
                                                            tmp_path, capsys, full_disk):
    out = tmp_path / "out"
    args = _writers(classifier, ft_cfg, corpus, authors_pth, out)[command]
    code, err = cli(capsys, *args)
    line = one_line(err)
    assert code == 2 and "no space left" in line
    left = [p for p in tmp_path.rglob("*") if p.is_file()]
    assert left == [], left  # no 0-byte, half-written or temporary file, nothing under out


@pytest.mark.parametrize("errno_", [errno.EROFS, errno.EACCES])
@pytest.mark.parametrize("command", ["import-checkpoint", "embed"])
def test_a_read_only_place_is_one_line(command, errno_, classifier, ft_cfg, corpus, authors_pth, tmp_path, capsys,
                                       monkeypatch):
    # Tests run as root, which ignores permission bits: the folder creation fails as a read-only disk would.
    import tempfile

    def refuse(*a, **k):
        raise OSError(errno_, os.strerror(errno_), str(tmp_path / "out"))

    monkeypatch.setattr(tempfile, "mkdtemp", refuse)
    monkeypatch.setattr(tempfile, "mkstemp", refuse)
    code, err = cli(capsys, *_writers(classifier, ft_cfg, corpus, authors_pth, tmp_path / "out")[command])
    assert code == 2 and str(tmp_path / "out") in one_line(err)
    assert not (tmp_path / "out").exists()  # embed removes the folder it made and could not fill


def test_demo_out_on_a_file_or_a_read_only_place(tmp_path, capsys, monkeypatch):
    f = tmp_path / "file"
    f.write_text("x")
    code, err = cli(capsys, "demo", "--out", f, "--quick")
    assert code == 2 and "is a file" in one_line(err)
    real_access = os.access
    monkeypatch.setattr(os, "access", lambda p, mode, **kw: str(p) != str(tmp_path) and real_access(p, mode, **kw))
    code, err = cli(capsys, "demo", "--out", tmp_path / "d", "--quick")
    assert code == 2 and "not writable" in one_line(err)


def test_embed_removes_the_folder_it_made_when_its_only_clip_fails(classifier, tmp_path, capsys):
    bad = tmp_path / "bad.wav"
    bad.write_bytes(b"garbage" * 100)
    code, err = cli(capsys, "embed", classifier / "final", bad, "--out", tmp_path / "emb")
    assert code == 2 and "bad.wav" in one_line(err)
    assert not (tmp_path / "emb").exists()


# --- 8: unrelated targets are not replaced --------------------------------------------------------------------------


def test_export_onnx_never_replaces_an_unrelated_file(classifier, tmp_path, capsys):
    out = tmp_path / "model.onnx"
    out.write_text("someone's notes")
    code, err = cli(capsys, "export", classifier / "final", out, "--format", "onnx")
    assert code == 2 and "not replaced" in one_line(err) and out.read_text() == "someone's notes"


def test_an_export_or_import_replaces_only_its_own_earlier_output(classifier, pt_run, authors_pth, tmp_path, capsys):
    other = copy_run(classifier, tmp_path / "other")
    for fmt, out in (("onnx", tmp_path / "m.onnx"),):  # (hf needs a cls-pooled model; it shares replaceable())
        for _ in range(2):  # the second is a rerun: the same source may replace its own output
            code, err = cli(capsys, "export", classifier / "final", out, "--format", fmt)
            assert code == 0, err
        code, err = cli(capsys, "export", other / "final", out, "--format", fmt)
        assert code == 2 and "--overwrite" in one_line(err)
        assert cli(capsys, "export", other / "final", out, "--format", fmt, "--overwrite")[0] == 0
    imported = tmp_path / "imported"
    assert cli(capsys, "import-checkpoint", authors_pth, imported)[0] == 0
    assert cli(capsys, "import-checkpoint", authors_pth, imported)[0] == 0
    shutil.copytree(classifier / "final", tmp_path / "ckpt")
    code, err = cli(capsys, "import-checkpoint", authors_pth, tmp_path / "ckpt")
    assert code == 2 and "not replaced" in one_line(err)
    assert json.loads((tmp_path / "ckpt" / "model.json").read_text())["kind"] == "classifier"
    assert cli(capsys, "import-checkpoint", authors_pth, tmp_path / "ckpt", "--overwrite")[0] == 0


def test_prepare_never_mixes_two_sources(corpus, tmp_path, capsys):
    out = tmp_path / "shards"
    assert cli(capsys, "prepare", corpus.pool, out, "--workers", "0")[0] == 0
    before = tree_digest(out)
    code, err = cli(capsys, "prepare", corpus.train, out, "--workers", "0")
    assert code == 2 and "--overwrite" in one_line(err) and tree_digest(out) == before
    assert cli(capsys, "prepare", corpus.pool, out, "--workers", "0")[0] == 0  # the same source: resumes
    assert cli(capsys, "prepare", corpus.train, out, "--workers", "0", "--overwrite")[0] == 0
    index = json.loads((out / "index.json").read_text())
    assert index["source"] == str(Path(corpus.train).resolve()) or index["source"] == os.path.abspath(corpus.train)
    assert len(list(out.glob("shard-*.tar"))) == len(index["shards"])


# --- 9: values that slip through -----------------------------------------------------------------------------------


@pytest.mark.parametrize("command, overrides, key", [
    ("pretrain", ["train.steps=0"], "train.steps"),
    ("finetune", ["train.epochs=0"], "train.epochs"),
    ("pretrain", ["train.steps=2", "audio.norm_std=0"], "audio.norm_std"),
    ("pretrain", ["train.steps=2", "audio.norm_std=-1"], "audio.norm_std"),
    ("pretrain", ["train.steps=2", "data.num_workers=-5"], "data.num_workers"),
    ("finetune", ["train.epochs=1", "model.fstride=0"], "model.fstride"),
    ("finetune", ["train.epochs=1", "train.device=cuda"], "train.device"),
])
def test_values_are_refused_under_dry_run_too(command, overrides, key, corpus, tmp_path, capsys):
    if key == "train.device" and torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    base = TINY if command == "pretrain" else [*FT, f"data.label_csv={corpus.labels}"]
    code, err = cli(capsys, command, "--dry-run", *base, f"data.train=[{corpus.pool}]",
                    f"train.run_dir={tmp_path / 'r'}", *overrides)
    assert code == 2 and key in one_line(err)


def test_import_norm_std_zero_and_top_k(classifier, authors_pth, corpus, tmp_path, capsys):
    code, err = cli(capsys, "import-checkpoint", authors_pth, tmp_path / "i", "--norm-mean", "0", "--norm-std", "0")
    assert code == 2 and "--norm-std" in one_line(err) and not (tmp_path / "i").exists()
    wav = next((corpus.root / "audio").glob("test_*.wav"))
    ckpt = shutil.copytree(classifier / "final", tmp_path / "zero_std")  # imported by an older ssast
    meta = json.loads((ckpt / "model.json").read_text())
    meta["audio"]["norm_std"] = 0.0
    (ckpt / "model.json").write_text(json.dumps(meta))
    code, err = cli(capsys, "predict", ckpt, wav, "--json")
    assert code == 2 and str(ckpt / "model.json") in one_line(err) and "norm_std" in err
    for k in ("-1", "0"):
        code, err = cli(capsys, "predict", classifier / "final", wav, "--top-k", k)
        assert code == 2 and "--top-k" in one_line(err)


def test_a_label_csv_that_is_not_utf8(corpus, tmp_path, capsys):
    bad = tmp_path / "labels.csv"
    bad.write_bytes("index,mid,display_name\n0,/m/a,caf\xe9\n".encode("latin-1"))
    code, err = cli(capsys, "finetune", *FT, f"data.label_csv={bad}", f"data.train=[{corpus.train}]",
                    "train.epochs=1", f"train.run_dir={tmp_path / 'r'}")
    assert code == 2 and str(bad) in one_line(err) and "UTF-8" in err


def test_an_empty_json_train_list(ft_cfg, bad_lists, tmp_path, capsys):
    code, err = cli(capsys, "finetune", "-c", ft_cfg, f"data.train=[{bad_lists[1]}]", f"train.run_dir={tmp_path / 'r'}")
    line = one_line(err)
    assert code == 2 and "data.train" in line and "no clips" in line and "shard" not in line


def test_compare_on_a_damaged_metrics_json(pt_run, tmp_path, capsys):
    run = copy_run(pt_run, tmp_path / "run")
    (run / "metrics.json").write_text("{not json")
    code, err = cli(capsys, "compare", run, "--out", tmp_path / "cmp")
    assert code == 2 and str(run / "metrics.json") in one_line(err)


def test_hear_refuses_nan_input(pt_run):
    from ssast.audio.io import AudioError
    from ssast.hear import load_model

    model = load_model(str(pt_run / "final"))
    audio = torch.zeros(3, 16000)
    audio[1, 100] = float("nan")
    with pytest.raises(AudioError, match=r"\[1\].*NaN"):
        model.scene_embeddings(audio)


# --- 10: small defects ------------------------------------------------------------------------------------------------


def test_a_folder_named_like_a_clip(corpus, classifier, tmp_path, capsys):
    d = tmp_path / "x.wav"
    d.mkdir()
    lst = tmp_path / "list.json"
    lst.write_text(json.dumps({"data": [{"wav": str(d), "labels": "x"}]}))
    code, err = cli(capsys, "pretrain", *TINY, f"data.train=[{lst}]", "train.steps=2", f"train.run_dir={tmp_path / 'r'}")
    assert code == 2 and "a folder, not an audio file" in err
    code, err = cli(capsys, "predict", classifier / "final", d)
    assert code == 2 and "is a folder" in one_line(err) and "damaged" not in err


def test_strict_mode_refuses_a_truncated_wav_and_names_folder_clips_by_path(tmp_path, capsys):
    folder = tmp_path / "clips"
    for i in range(4):
        make_wav(folder / f"c{i}.wav", 0.7, freq=300 + 50 * i, subtype="PCM_16")
    cut = folder / "c2.wav"
    data = cut.read_bytes()
    cut.write_bytes(data[: len(data) // 2])
    args = ["pretrain", *TINY, f"data.train=[{folder}]", "train.steps=2", "data.strict=true"]
    code, err = cli(capsys, *args, f"train.run_dir={tmp_path / 'r'}")
    line = one_line(err)
    assert code == 2 and "truncated" in line and str(cut) in line
    code, err = cli(capsys, *args[:-1], f"train.run_dir={tmp_path / 'r2'}")  # the default mode uses what is there
    assert code == 0, err
    code, err = cli(capsys, "prepare", folder, tmp_path / "shards", "--strict", "--workers", "0")
    assert code == 2 and "truncated" in one_line(err) and str(cut) in err


def test_allow_missing_warns_in_one_plain_line(corpus, tmp_path, capsys):
    lst = Path(corpus.pool).parent / "with_gone.json"  # beside the pool: its relative paths still resolve
    clips = json.loads(Path(corpus.pool).read_text())["data"]
    lst.write_text(json.dumps({"data": clips + [{"wav": str(tmp_path / "gone.wav")}]}))
    code, err = cli(capsys, "pretrain", *TINY, f"data.train=[{lst}]", "train.steps=1", "data.allow_missing=true",
                    f"train.run_dir={tmp_path / 'r'}")
    assert code == 0, err
    assert "warning:" in err and "warnings.warn" not in err and "UserWarning" not in err


def test_the_first_save_on_a_full_disk_does_not_offer_a_resume(corpus, tmp_path, capsys, monkeypatch):
    import ssast.models.checkpoint as mc

    def full(*a, **k):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(mc, "atomic_write_dir", full)
    code, err = cli(capsys, "pretrain", *TINY, f"data.train=[{corpus.pool}]", "train.steps=2",
                    f"train.run_dir={tmp_path / 'r'}")
    line = one_line(err)
    assert code == 2 and "nothing to resume" in line and "--resume" not in line
