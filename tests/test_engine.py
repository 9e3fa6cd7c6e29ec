"""The training engine end to end on tiny synthetic data: pretrain -> finetune, resume, signals, bad losses, DDP."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from ssast.config import load_config
from ssast.demo.run import make_corpus
from ssast.models.checkpoint import load_state
from ssast.train.engine import TrainingStopped, train
from ssast.train.state_io import read_state

REPO = Path(__file__).resolve().parent.parent
TINY = [
    "model.size=custom", "model.dim=32", "model.depth=2", "model.heads=2", "model.input_tdim=64",
    "audio.target_length=64", "data.num_workers=0", "data.batch_size=4", "train.log_every=1",
    "train.progress=lines", "train.precision=fp32", "optim.warmup_steps=2",
]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return make_corpus(tmp_path_factory.mktemp("corpus"), pool=16, train_per_class=2, test_per_class=1, seconds=0.7)


def pretrain_cfg(corpus, run_dir, *extra):
    return load_config(None, ["task=pretrain", *TINY, "model.mask_patch=0.5", f"data.train=[{corpus.pool}]",
                              f"train.run_dir={run_dir}", "train.steps=6", "train.ckpt_every=2",
                              "train.image_every=3", *extra])


def finetune_cfg(corpus, run_dir, *extra):
    return load_config(None, ["task=finetune", *TINY, f"data.train=[{corpus.train}]", f"data.valid=[{corpus.test}]",
                              f"data.label_csv={corpus.labels}", f"train.run_dir={run_dir}", "train.epochs=2",
                              "model.fstride=10", "model.tstride=10", *extra])


def scalars(run_dir):
    from ssast.evaluate.compare import read_scalars

    return read_scalars(run_dir)


def test_pretrain_then_finetune(corpus, tmp_path):
    pre = tmp_path / "pre"
    res = train(pretrain_cfg(corpus, pre))
    assert res["steps"] == 6
    assert (pre / "last").resolve().name == "step-00000006"
    assert (pre / "final" / "model.safetensors").is_file() and (pre / "config.yaml").is_file()
    s = scalars(pre)
    for tag in ("train/loss", "train/nce", "train/mse", "train/accuracy", "train/lr", "train/samples_per_s"):
        assert len(s[tag]) == 6, tag
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(pre / "tb"))
    acc.Reload()
    assert "pretrain/reconstruction" in acc.Tags()["images"]
    # keep_last 3 of the checkpoints at steps 2, 4, 6
    assert sorted(p.name for p in (pre / "checkpoints").iterdir()) == ["step-00000002", "step-00000004", "step-00000006"]

    ft = tmp_path / "ft"
    res = train(finetune_cfg(corpus, ft, f"model.init={pre / 'final'}"))
    assert 0.0 <= res["final"]["accuracy"] <= 1.0
    assert res["epochs"] == 2 and (ft / "best" / "model.json").is_file()
    meta = json.loads((ft / "final" / "model.json").read_text())
    assert meta["kind"] == "classifier" and len(meta["labels"]) == 6
    assert [h["epoch"] for h in res["history"]] == [1, 2]
    # the encoder was initialised from the pretraining run: the patch kernel starts equal (so differs from random)
    metrics = json.loads((ft / "metrics.json").read_text())
    assert metrics["final"]["accuracy"] == res["final"]["accuracy"]


def test_lr_schedule_and_warmup_logged(corpus, tmp_path):
    run = tmp_path / "ft"
    train(finetune_cfg(corpus, run, "optim.schedule=step", "optim.step_start=1", "optim.step_factor=0.5",
                       "optim.warmup_steps=0", "optim.lr=1e-3"))
    lrs = [v for _, v in scalars(run)["train/lr"]]
    per_epoch = len(lrs) // 2
    assert lrs[:per_epoch] == pytest.approx([1e-3] * per_epoch)
    assert lrs[per_epoch:] == pytest.approx([5e-4] * per_epoch)


def test_non_finite_loss_stops_with_message(corpus, tmp_path, monkeypatch):
    from ssast.train import tasks

    def nan_loss(self, model, feats, labels, gen):
        out = model(feats, generator=gen)
        return out.loss * float("nan"), {"nce": out.nce, "mse": out.mse, "accuracy": out.accuracy}

    monkeypatch.setattr(tasks.PretrainTask, "loss", nan_loss)
    with pytest.raises(TrainingStopped, match="not finite for 3 steps in a row"):
        train(pretrain_cfg(corpus, tmp_path / "nan", "train.max_bad_steps=3"))
    # the checkpoint written at step 2 holds the initial weights: skipped updates never reach the model
    state = load_state(tmp_path / "nan" / "last")
    assert all(torch.isfinite(t).all() for t in state.values() if t.is_floating_point())
    opt_state = read_state(tmp_path / "nan" / "last")["optimizer"]["state"]
    assert all(float(st["step"]) == 0 and not st["exp_avg"].any() for st in opt_state.values())


def test_a_few_non_finite_losses_are_skipped_and_training_goes_on(corpus, tmp_path, monkeypatch):
    from ssast.train import tasks

    real = tasks.PretrainTask.loss
    calls = {"n": 0}

    def sometimes_nan(self, model, feats, labels, gen):
        calls["n"] += 1
        loss, extras = real(self, model, feats, labels, gen)
        return (loss * float("nan") if calls["n"] in (2, 3) else loss), extras

    monkeypatch.setattr(tasks.PretrainTask, "loss", sometimes_nan)
    res = train(pretrain_cfg(corpus, tmp_path / "some", "train.max_bad_steps=3"))
    assert res["steps"] == 6 and res["skipped_steps"] == 2
    losses = [v for _, v in scalars(tmp_path / "some")["train/loss"]]
    assert all(v == v for v in losses)  # skipped steps do not poison the logged averages
    state = load_state(tmp_path / "some" / "final")
    assert all(torch.isfinite(t).all() for t in state.values() if t.is_floating_point())


def test_k_masks_per_clip_resume_is_exact(corpus, tmp_path, monkeypatch):
    """Two masks per clip: a run stopped at step 3 (SIGTERM's path) and resumed ends bit-equal to an unbroken one."""
    from ssast.train.tasks import PretrainTask

    k2 = ["model.masks_per_clip=2", "train.image_every=0", "train.ckpt_every=100"]
    straight = train(pretrain_cfg(corpus, tmp_path / "straight", *k2))
    one_mask = train(pretrain_cfg(corpus, tmp_path / "one", "train.image_every=0", "train.ckpt_every=100"))
    after_step = PretrainTask.after_step

    def stop_at_3(self, tr, extras, bad):
        after_step(self, tr, extras, bad)
        if tr.step == 3:
            tr.stopper.local = signal.SIGTERM  # what the handler notes on SIGTERM

    monkeypatch.setattr(PretrainTask, "after_step", stop_at_3)
    with pytest.raises(TrainingStopped, match="step 3"):
        train(pretrain_cfg(corpus, tmp_path / "stopped", *k2))
    monkeypatch.setattr(PretrainTask, "after_step", after_step)
    resumed = train(pretrain_cfg(corpus, tmp_path / "stopped", *k2), resume=str(tmp_path / "stopped"))
    assert straight["steps"] == resumed["steps"] == 6
    a, b = load_state(tmp_path / "straight" / "final"), load_state(tmp_path / "stopped" / "final")
    assert a.keys() == b.keys() and all(torch.equal(a[key], b[key]) for key in a)
    c = load_state(tmp_path / "one" / "final")  # K changed the training: one mask per clip ends elsewhere
    assert not all(torch.equal(a[key], c[key]) for key in a) and one_mask["steps"] == 6


def _cli(args, **kw):
    env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1")
    return subprocess.Popen([sys.executable, "-m", "ssast", *args], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, **kw)


def _pretrain_args(corpus, run_dir, steps):
    return ["pretrain", *TINY, "model.mask_patch=0.5", f"data.train=[{corpus.pool}]", f"train.run_dir={run_dir}",
            f"train.steps={steps}", "train.ckpt_every=1", "train.image_every=0", "train.keep_last=2"]


def test_sigkill_resume_is_bitwise_exact(corpus, tmp_path):
    steps = 12
    ref = _cli(_pretrain_args(corpus, tmp_path / "ref", steps))
    out, _ = ref.communicate(timeout=600)
    assert ref.returncode == 0, out

    run = tmp_path / "killed"
    p = _cli(_pretrain_args(corpus, run, steps))
    deadline = time.time() + 300
    while time.time() < deadline:  # kill once a mid-run checkpoint exists
        last = run / "last"
        if last.exists() and int(last.resolve().name.split("-")[1]) >= 4:
            break
        time.sleep(0.05)
    p.send_signal(signal.SIGKILL)
    p.communicate()
    killed_at = int((run / "last").resolve().name.split("-")[1])
    assert killed_at < steps, "the run finished before it could be killed; make it longer"
    r = _cli(["pretrain", "--resume", str(run)])
    out, _ = r.communicate(timeout=600)
    assert r.returncode == 0, out
    assert f"at step {killed_at}" in out
    a, b = load_state(tmp_path / "ref" / "final"), load_state(run / "final")
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


def test_sigterm_saves_a_checkpoint_and_resumes(corpus, tmp_path):
    run = tmp_path / "term"
    p = _cli(_pretrain_args(corpus, run, 400) + ["train.ckpt_every=1000"])
    deadline = time.time() + 300
    while time.time() < deadline and not (run / "tb").exists():
        time.sleep(0.05)
    time.sleep(1.5)
    p.send_signal(signal.SIGTERM)
    out, _ = p.communicate(timeout=120)
    assert p.returncode == 75, out  # REQUEUE_EXIT: a batch script requeues the job
    assert "stopped by signal SIGTERM" in out and "--resume" in out
    stopped = int((run / "last").resolve().name.split("-")[1])
    assert 0 < stopped < 400


def test_cli_config_error_is_one_clear_line(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("optim:\n  lr: fast\n")
    p = _cli(["pretrain", "--config", str(bad)])
    out, _ = p.communicate(timeout=120)
    assert p.returncode == 2
    assert out.strip().count("\n") == 0 and "optim.lr" in out and str(bad) in out and "Traceback" not in out


def test_dry_run_prints_config_and_model(tmp_path):
    p = _cli(["finetune", "--config", str(REPO / "configs/finetune/esc50_patch.yaml"), "--dry-run"])
    out, _ = p.communicate(timeout=120)
    assert p.returncode == 0, out
    assert "12x50 = 600 tokens" in out and "stride 10x10" in out and "lr: 0.0001" in out


@pytest.mark.skipif(not torch.distributed.is_available(), reason="no torch.distributed")
def test_torchrun_two_processes_match_one(corpus, tmp_path):
    """Two gloo ranks with half the batch each give the weights of one process with the whole batch."""
    common = ["finetune", *TINY, f"data.train=[{corpus.train}]", f"data.label_csv={corpus.labels}",
              "train.epochs=2", "optim.warmup_steps=0", "model.fstride=16", "model.tstride=16"]
    one = _cli(common + ["data.batch_size=4", f"train.run_dir={tmp_path / 'one'}"])
    out, _ = one.communicate(timeout=600)
    assert one.returncode == 0, out
    env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1")
    import socket

    with socket.socket() as sock:  # a free port for the rendezvous
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    two = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", f"--master_port={port}",
                          "-m", "ssast", *common, "data.batch_size=2", f"train.run_dir={tmp_path / 'two'}"],
                         env=env, capture_output=True, text=True, timeout=600)
    assert two.returncode == 0, two.stdout + two.stderr
    a, b = load_state(tmp_path / "one" / "final"), load_state(tmp_path / "two" / "final")
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-4, atol=1e-5, msg=k)


def test_compare_writes_table_and_png(corpus, tmp_path):
    runs = []
    for shape in (("16", "16"), ("128", "2")):
        run = tmp_path / f"pre-{shape[0]}x{shape[1]}"
        train(pretrain_cfg(corpus, run, f"model.fshape={shape[0]}", f"model.tshape={shape[1]}", "train.steps=3"))
        runs.append(str(run))
    from ssast.evaluate.compare import compare_runs

    table, png = compare_runs(runs, str(tmp_path / "cmp"))
    assert "16x16" in table and "128x2" in table and "masked_acc" in table
    assert png.is_file() and png.stat().st_size > 1000


def test_bf16_on_cpu_trains_with_finite_falling_loss(corpus, tmp_path):
    from ssast.train.runtime import cpu_supports_bf16

    if not cpu_supports_bf16():
        cfg = pretrain_cfg(corpus, tmp_path / "nobf16", "train.precision=bf16", "train.steps=1")
        res = train(cfg)
        assert res["precision"] == "fp32"  # a clear message and fp32 on CPUs without bf16
        return
    run = tmp_path / "bf16"
    res = train(pretrain_cfg(corpus, run, "train.precision=bf16", "train.steps=40", "optim.lr=2e-3",
                             "train.ckpt_every=100", "train.image_every=0"))
    assert res["precision"] == "bf16"
    losses = [v for _, v in scalars(run)["train/loss"]]
    assert all(v == v and abs(v) != float("inf") for v in losses)
    assert sum(losses[-5:]) / 5 < 0.8 * sum(losses[:5]) / 5
    # master weights stay fp32
    assert all(t.dtype == torch.float32 for t in load_state(run / "final").values() if t.is_floating_point())


def test_multilabel_finetune_reports_map_and_per_class_csv(corpus, tmp_path):
    run = tmp_path / "ml"
    res = train(finetune_cfg(corpus, run, "data.multilabel=true", "train.epochs=1", "train.ema=0.9",
                             "augment.mixup=0.5", "train.wa_start=1", "train.wa_end=1"))
    assert {"mAP", "mAUC", "d_prime", "accuracy"} <= set(res["final"])
    rows = (run / "per_class_ap.csv").read_text().strip().splitlines()
    assert rows[0] == "index,mid,display_name,ap" and len(rows) == 7
    assert rows[1].startswith("0,rising,")


def test_leaving_the_process_group_tears_it_down(tmp_path):
    """Every command leaves torchrun's group itself (ssast.cli.main): a group left to the exit-time destructors can
    abort a rank with SIGABRT while its peer still writes."""
    import torch.distributed as dist

    from ssast.train.runtime import leave_distributed

    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    try:
        leave_distributed(completed=True)  # one rank's barrier passes at once
        assert not dist.is_initialized()
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()
    leave_distributed(completed=False)  # no group: nothing to do
