"""A resume never runs foreign code, never writes outside the run it resumes, and changes nothing when it is refused;
a run directory has one user at a time; empty or all-bad data stop with one line; a failed or killed save loses
nothing. (`pytest -k resume` runs the resume cases.)"""
from __future__ import annotations

import errno
import hashlib
import io
import os
import pickle
import shutil
import signal
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import pytest
import torch

from conftest import make_wav
from ssast.cli import main
from ssast.demo.run import make_corpus
from ssast.models.checkpoint import load_state
from ssast.train import checkpoints as ck
from ssast.train.state_io import read_state

REPO = Path(__file__).resolve().parent.parent
TINY = ["model.size=custom", "model.dim=32", "model.depth=1", "model.heads=2", "model.input_tdim=64",
        "audio.target_length=64", "data.num_workers=0", "data.batch_size=4", "train.progress=none",
        "train.precision=fp32", "model.mask_patch=0.5", "train.image_every=0", "optim.warmup_steps=2"]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return make_corpus(tmp_path_factory.mktemp("safety"), pool=12, train_per_class=2, test_per_class=1, seconds=0.7)


def pretrain(capsys, corpus, run_dir, *extra) -> tuple[int, str]:
    code = main(["pretrain", *TINY, f"data.train=[{corpus.pool}]", f"train.run_dir={run_dir}", *map(str, extra)])
    return code, capsys.readouterr().err


def resume(capsys, run_dir, *extra) -> tuple[int, str]:
    code = main(["pretrain", "--resume", str(run_dir), *map(str, extra)])
    return code, capsys.readouterr().err


def tree_digest(root: Path) -> dict[str, str]:
    """Every file and link under root with its content hash (links: their target)."""
    out = {}
    for p in sorted(root.rglob("*")):
        rel = str(p.relative_to(root))
        if p.is_symlink():
            out[rel] = "-> " + os.readlink(p)
        elif p.is_file():
            out[rel] = hashlib.sha256(p.read_bytes()).hexdigest()
    return out


def one_line(err: str) -> str:
    lines = [ln for ln in err.strip().splitlines() if ln.strip()]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


@pytest.fixture(scope="module")
def base_run(corpus, tmp_path_factory):
    """A finished 4-step run with checkpoints at steps 2 and 4 (copied by each test that changes it)."""
    run = tmp_path_factory.mktemp("base") / "run"
    code = main(["pretrain", *TINY, f"data.train=[{corpus.pool}]", f"train.run_dir={run}", "train.steps=4",
                 "train.ckpt_every=2"])
    assert code == 0
    return run


class Boom:
    """Unpickling this creates a marker file: the proof that a loader executed code from the run directory."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def test_resume_never_unpickles_the_run_directory(base_run, tmp_path, capsys):
    marker = tmp_path / "pwned"
    # A state from someone else: a crafted pickle beside the real state, and one in place of it.
    beside = tmp_path / "beside"
    shutil.copytree(base_run, beside, symlinks=True)
    last = (beside / "last").resolve()
    (last / "trainer.pt").write_bytes(pickle.dumps(Boom(marker)))
    code, err = resume(capsys, beside, "train.steps=6")
    assert code == 0, err
    assert not marker.exists()
    assert read_state(beside / "last")["step"] == 6

    instead = tmp_path / "instead"
    shutil.copytree(base_run, instead, symlinks=True)
    for ckpt in ck.list_checkpoints(instead):
        for f in ("trainer.json", "trainer.safetensors"):
            (ckpt / f).unlink()
        (ckpt / "trainer.pt").write_bytes(pickle.dumps(Boom(marker)))
    before = tree_digest(instead)
    code, err = resume(capsys, instead, "train.steps=6")
    assert code == 2 and not marker.exists()
    assert "no complete checkpoint" in one_line(err)
    assert tree_digest(instead) == before

    # The old pickle format is named and refused, never loaded.
    only_pickle = tmp_path / "only_pickle"
    only_pickle.mkdir()
    (only_pickle / "trainer.pt").write_bytes(pickle.dumps(Boom(marker)))
    with pytest.raises(Exception, match="old pickle format, which is never loaded"):
        read_state(only_pickle)
    assert not marker.exists()


def test_no_pickle_loading_anywhere_in_the_package():
    """No code path of the library may call torch.load without weights_only=True, or pickle.load at all."""
    offenders = []
    for py in (REPO / "ssast").rglob("*.py"):
        text = py.read_text()
        for i, line in enumerate(text.splitlines(), 1):
            if "pickle.load" in line or ("torch.load(" in line and "weights_only=True" not in line):
                offenders.append(f"{py.relative_to(REPO)}:{i}: {line.strip()}")
    assert not offenders, offenders


def test_damaged_trainer_state_is_one_line(base_run, tmp_path, capsys):
    run = tmp_path / "run"
    shutil.copytree(base_run, run, symlinks=True)
    (run / "last" / "trainer.json").write_text('{"format": "ssast-trainer-state", "state": {"step": {"$tensor": "x"')
    before = tree_digest(run)
    code, err = resume(capsys, run, "train.steps=6")
    assert code == 2 and "damaged or foreign" in one_line(err)
    assert tree_digest(run) == before


def test_resume_of_a_copied_run_writes_only_into_the_copy(base_run, corpus, tmp_path, capsys, monkeypatch):
    original = tmp_path / "original"
    shutil.copytree(base_run, original, symlinks=True)
    before = tree_digest(original)
    copy = tmp_path / "copy"
    shutil.copytree(original, copy, symlinks=True)  # its config.yaml still names `original` as train.run_dir
    code, err = resume(capsys, copy, "train.steps=6", "train.progress=lines")
    assert code == 0, err
    assert tree_digest(original) == before
    assert read_state(copy / "last")["step"] == 6
    assert f"this run writes only into {copy}" in err

    # With -c CONFIG (no train.run_dir in it: the default would be runs/run), the run still stays in its folder.
    monkeypatch.chdir(tmp_path)
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text("model: {size: custom, dim: 32, depth: 1, heads: 2, input_tdim: 64, mask_patch: 0.5}\n"
                   "audio: {target_length: 64}\n"
                   f"data: {{train: [{corpus.pool}], num_workers: 0, batch_size: 4}}\n"
                   "optim: {warmup_steps: 2}\n"
                   "train: {progress: none, precision: fp32, image_every: 0, steps: 8}\n")
    code = main(["pretrain", "--resume", str(copy), "-c", str(cfg)])
    err = capsys.readouterr().err
    assert code == 0, err
    assert not (tmp_path / "runs").exists()
    assert read_state(copy / "last")["step"] == 8
    assert f"run_dir: {copy}" in (copy / "config.yaml").read_text()


def test_refused_resume_changes_nothing_and_names_the_keys(base_run, tmp_path, capsys):
    run = tmp_path / "run"
    shutil.copytree(base_run, run, symlinks=True)
    before = tree_digest(run)
    code, err = resume(capsys, run, "model.dim=64", "optim.lr=0.5")
    line = one_line(err)
    assert code == 2
    assert "model.dim (saved 32, given 64)" in line and "optim.lr" in line and "train.steps" in line
    assert tree_digest(run) == before
    # and the run still resumes as it was
    code, err = resume(capsys, run, "train.steps=6")
    assert code == 0, err
    assert read_state(run / "last")["step"] == 6


def test_second_run_on_a_busy_run_dir_is_refused_and_a_crash_leaves_no_stale_lock(corpus, tmp_path, capsys):
    run = tmp_path / "run"
    run.mkdir()
    holder = subprocess.Popen([sys.executable, "-c", (
        "import sys, time; from pathlib import Path; from ssast.train.checkpoints import RunLock; "
        f"RunLock(Path({str(run)!r})); print('locked', flush=True); time.sleep(600)")],
        stdout=subprocess.PIPE, text=True, env=dict(os.environ, PYTHONPATH=str(REPO)))
    try:
        assert holder.stdout.readline().strip() == "locked"
        code, err = pretrain(capsys, corpus, run, "train.steps=2")
        assert code == 2
        assert f"another ssast run (pid {holder.pid}) is using this directory" in one_line(err)
        assert not (run / "config.yaml").exists()
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    # the holder died without releasing: the kernel dropped its lock, the next run goes ahead
    code, err = pretrain(capsys, corpus, run, "train.steps=2")
    assert code == 0, err


def test_resume_cleans_what_a_killed_save_left(base_run, tmp_path, capsys):
    run = tmp_path / "run"
    shutil.copytree(base_run, run, symlinks=True)
    half = run / "checkpoints" / "step-00000006.tmp-k1ll3d"
    half.mkdir()
    (half / "model.safetensors").write_bytes(os.urandom(2048))
    stray = run / ".metrics.json.abc123.tmp"
    stray.write_text("{")
    code, err = resume(capsys, run, "train.steps=6")
    assert code == 0, err
    assert not half.exists() and not stray.exists()
    assert "left by an interrupted save" in err
    assert read_state(run / "last")["step"] == 6


def test_full_disk_during_a_checkpoint_is_one_line_and_the_previous_one_resumes(corpus, tmp_path, capsys, monkeypatch):
    from ssast.train import engine

    straight = tmp_path / "straight"
    assert pretrain(capsys, corpus, straight, "train.steps=6", "train.ckpt_every=2")[0] == 0

    real = engine.write_state

    def fill_disk_at_step_4(folder, state):
        if state["step"] == 4:
            with open(Path(folder) / "trainer.safetensors", "wb") as f:
                f.write(b"\0" * 1000)  # a partial file, as a full disk leaves it
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(folder, state)

    monkeypatch.setattr(engine, "write_state", fill_disk_at_step_4)
    run = tmp_path / "run"
    code, err = pretrain(capsys, corpus, run, "train.steps=6", "train.ckpt_every=2")
    line = one_line(err)
    assert code == 2
    assert "no space left on the device while saving step 4" in line and "step-00000002" in line
    assert [p.name for p in (run / "checkpoints").iterdir()] == ["step-00000002"]  # nothing partial
    assert os.readlink(run / "last").endswith("step-00000002")

    monkeypatch.setattr(engine, "write_state", real)
    code, err = resume(capsys, run)
    assert code == 0, err
    a, b = load_state(run / "final"), load_state(straight / "final")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_pretraining_on_only_bad_clips_stops_with_one_line(tmp_path, capsys):
    bad = tmp_path / "bad"
    bad.mkdir()
    for i in range(3):
        (bad / f"z{i}.wav").write_bytes(b"")
    make_wav(bad / "silent.wav", 0.5, amp=0.0)
    for image_every in (0, 5):  # with and without the reconstruction clip taken before training
        code = main(["pretrain", *TINY, f"data.train=[{bad}]", f"train.run_dir={tmp_path / f'r{image_every}'}",
                     "train.steps=3", f"train.image_every={image_every}"])
        line = one_line(capsys.readouterr().err)
        assert code == 2
        assert "data.train: no usable clip; skipped 4 of 4 clips: 3 empty, 1 silent" in line


def test_an_endless_shard_stream_of_bad_clips_gives_up(corpus, tmp_path, capsys, monkeypatch):
    from ssast.data import loader

    shards = tmp_path / "shards"
    assert main(["prepare", str(corpus.pool), str(shards), "--workers", "1"]) == 0
    capsys.readouterr()
    # damage every audio member of the shard, keeping the archive well-formed
    tar_path = next(shards.glob("*.tar"))
    broken = tmp_path / "broken.tar"
    with tarfile.open(tar_path) as src, tarfile.open(broken, "w") as dst:
        for m in src.getmembers():
            data = src.extractfile(m).read()
            if m.name.endswith(".flac"):
                data = b"not audio" * 10
                m.size = len(data)
            dst.addfile(m, io.BytesIO(data))
    shutil.move(broken, tar_path)
    monkeypatch.setattr(loader, "ENDLESS_GIVE_UP", 50)
    started = time.time()
    code = main(["pretrain", *TINY, f"data.train=[{shards}]", f"train.run_dir={tmp_path / 'r'}", "train.steps=3"])
    line = one_line(capsys.readouterr().err)
    assert code == 2 and "data.train: no usable clip" in line and "corrupt" in line
    assert time.time() - started < 120


def test_killed_prepare_leaves_no_worker_behind(corpus, tmp_path):
    """SIGKILL the parent of a prepare pool: its spawned workers must die with it instead of writing on."""
    (tmp_path / "slowprep.py").write_text(
        "import os, time\n"
        "import ssast.data.shard_writer as sh\n"
        "real = sh._write_shard\n"
        "def slow(task):\n"
        "    print('worker', os.getpid(), flush=True)\n"
        "    time.sleep(60)\n"
        "    return real(task)\n"
        "def run(src, out):\n"
        "    sh._write_shard = slow  # workers get `slowprep.slow` by reference and import this module\n"
        "    sh.prepare_shards(src, out, shard_size=3, workers=2, progress=False)\n")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(tmp_path), str(REPO)]))
    parent = subprocess.Popen(
        [sys.executable, "-c", f"import slowprep; slowprep.run({str(corpus.pool)!r}, {str(tmp_path / 'out')!r})"],
        stdout=subprocess.PIPE, text=True, env=env)
    pids = []
    deadline = time.time() + 120
    while len(pids) < 2 and time.time() < deadline:
        line = parent.stdout.readline()
        if line.startswith("worker"):
            pids.append(int(line.split()[1]))
    assert len(pids) == 2
    parent.send_signal(signal.SIGKILL)
    parent.wait()

    def alive(pid: int) -> bool:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        # a zombie (dead, not yet reaped by init) counts as gone
        try:
            return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"
        except OSError:
            return False

    deadline = time.time() + 10
    while any(alive(p) for p in pids) and time.time() < deadline:
        time.sleep(0.2)
    assert not any(alive(p) for p in pids)
