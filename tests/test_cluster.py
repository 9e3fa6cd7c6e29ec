"""Training that survives a cluster: two-node rendezvous, the SLURM script, preemption under DDP, elastic restarts,
activation checkpointing. Every process group is gloo on 127.0.0.1 with a tiny model; every wait has a timeout."""
from __future__ import annotations

import json
import os
import signal
import socket
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from ssast.config import ConfigError, load_config
from ssast.demo.run import make_corpus
from ssast.models.checkpoint import load_state
from ssast.train.checkpoints import auto_resume
from ssast.train.preemption import MARKER, REQUEUE_EXIT

REPO = Path(__file__).resolve().parent.parent
TINY = [
    "model.size=custom", "model.dim=32", "model.depth=2", "model.heads=2", "model.input_tdim=64",
    "audio.target_length=64", "data.num_workers=0", "train.log_every=1", "train.progress=lines",
    "train.precision=fp32", "train.device=cpu", "optim.warmup_steps=2", "model.mask_patch=0.5", "train.image_every=0",
]
STEPS = 40
ENV = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1")
pytestmark = pytest.mark.skipif(not torch.distributed.is_available(), reason="no torch.distributed")


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return make_corpus(tmp_path_factory.mktemp("corpus"), pool=16, train_per_class=2, test_per_class=1, seconds=0.7)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def pretrain_args(corpus, run_dir, *extra) -> list[str]:
    return ["pretrain", *TINY, f"data.train=[{corpus.pool}]", f"train.run_dir={run_dir}", f"train.steps={STEPS}",
            "data.batch_size=2", "train.ckpt_every=1000", "train.keep_last=2", *extra]


def torchrun(args, *, nproc=2, port=None, extra=()) -> list[str]:
    port = port or free_port()
    return [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={nproc}", "--nnodes=1",
            "--rdzv_backend=c10d", f"--rdzv_endpoint=127.0.0.1:{port}", "--local_addr=127.0.0.1", *extra,
            "-m", "ssast", *args]


def run(cmd, timeout=300) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, env=ENV, capture_output=True, text=True, timeout=timeout)


def assert_same_weights(a_dir: Path, b_dir: Path, exact: bool = True) -> None:
    a, b = load_state(a_dir), load_state(b_dir)
    assert a.keys() == b.keys()
    for k in a:
        if exact:
            assert torch.equal(a[k], b[k]), k
        else:
            torch.testing.assert_close(a[k], b[k], rtol=1e-4, atol=1e-5, msg=k)


@pytest.fixture(scope="module")
def reference(corpus, tmp_path_factory):
    """An uninterrupted two-rank run: what every stopped, killed or restarted run must end with, bit for bit."""
    run_dir = tmp_path_factory.mktemp("ref") / "run"
    p = run(torchrun(pretrain_args(corpus, run_dir)))
    assert p.returncode == 0, p.stdout + p.stderr
    return run_dir / "final"


def workers(agent: subprocess.Popen) -> dict[int, int]:
    """{rank: pid} of the worker processes torchrun started."""
    found = {}
    for pid in Path(f"/proc/{agent.pid}/task/{agent.pid}/children").read_text().split():
        try:
            env = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
        except OSError:
            continue
        ranks = [e[5:] for e in env if e.startswith(b"RANK=")]
        if ranks:
            found[int(ranks[0])] = int(pid)
    return found


def wait_for(cond, what: str, agent: subprocess.Popen, timeout: float = 240) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if cond():
            return
        if agent.poll() is not None:
            raise AssertionError(f"torchrun ended (exit {agent.returncode}) before {what}: {agent.stdout.read()}")
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def logged_step(run_dir: Path) -> int:
    """The last step rank 0 logged (log.txt lines start with 'step N/TOTAL')."""
    log = run_dir / "log.txt"
    lines = log.read_text().splitlines() if log.is_file() else []
    steps = [int(w[1].split("/")[0]) for w in map(str.split, lines) if w[:1] == ["step"] and "/" in w[1]]
    return max(steps, default=0)


def last_checkpoint(run_dir: Path) -> int:
    last = run_dir / "last"
    return int(last.resolve().name.split("-")[1]) if last.exists() else 0


# -- 1. several nodes ----------------------------------------------------------------------------------------------

def test_nnodes_two_torchrun_launches_match_one_process(corpus, tmp_path):
    """Two torchrun "nodes" (one process each, c10d rendezvous on 127.0.0.1) = one process with the whole batch."""
    common = ["finetune", *TINY, f"data.train=[{corpus.train}]", f"data.label_csv={corpus.labels}", "train.epochs=2",
              "optim.warmup_steps=0", "model.fstride=16", "model.tstride=16"]
    one = run([sys.executable, "-m", "ssast", *common, "data.batch_size=4", f"train.run_dir={tmp_path / 'one'}"])
    assert one.returncode == 0, one.stdout + one.stderr
    port = free_port()
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nnodes=2", "--nproc_per_node=1", "--rdzv_backend=c10d",
           f"--rdzv_endpoint=127.0.0.1:{port}", "--rdzv_id=twonodes", "--local_addr=127.0.0.1", "-m", "ssast",
           *common, "data.batch_size=2", f"train.run_dir={tmp_path / 'two'}"]
    nodes = [subprocess.Popen(cmd, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
             for _ in range(2)]
    try:
        outs = [n.communicate(timeout=300)[0] for n in nodes]
    finally:
        for n in nodes:
            n.kill()
    assert [n.returncode for n in nodes] == [0, 0], "\n".join(outs)
    assert any("world size 2" in o for o in outs)
    assert_same_weights(tmp_path / "one" / "final", tmp_path / "two" / "final", exact=False)


def _stub(bin_dir: Path, name: str, body: str) -> None:
    path = bin_dir / name
    path.write_text("#!/usr/bin/env bash\n" + body)
    path.chmod(path.stat().st_mode | stat.S_IEXEC)


def _sbatch(tmp_path: Path, run_dir: Path, srun_exit: int = 0) -> tuple[subprocess.CompletedProcess, list, list]:
    """Run pretrain/run_slurm.sbatch as SLURM would on a 2-node job, with srun and scontrol stubbed: srun records
    the command it was given and exits with ``srun_exit``; scontrol lists two hosts and records a requeue."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    log = tmp_path / "calls.jsonl"
    log.unlink(missing_ok=True)
    record = (f'{sys.executable} -c "import json, sys; open(\'{log}\', \'a\').write(json.dumps(sys.argv[1:]) + '
              f'chr(10))" "$(basename "$0")" "$@"\n')
    _stub(bin_dir, "srun", record + f"exit {srun_exit}\n")
    _stub(bin_dir, "scontrol", record + 'if [ "$1 $2" = "show hostnames" ]; then printf "node-a\\nnode-b\\n"; fi\n')
    env = dict(ENV, PATH=f"{bin_dir}:{os.environ['PATH']}", SLURM_JOB_ID="4242", SLURM_NNODES="2",
               SLURM_JOB_NODELIST="node-[a-b]", SLURM_GPUS_ON_NODE="4", SLURM_SUBMIT_DIR=str(REPO),
               RUN_DIR=str(run_dir), PYTHON=sys.executable)
    p = subprocess.run(["bash", str(REPO / "pretrain/run_slurm.sbatch"), "patch", "tiny", "data.batch_size=3"],
                       env=env, capture_output=True, text=True, timeout=60, cwd=tmp_path)
    calls = [json.loads(line) for line in log.read_text().splitlines()] if log.is_file() else []
    return p, [c[1:] for c in calls if c[0] == "srun"], [c[1:] for c in calls if c[0] == "scontrol"]


def test_nnodes_sbatch_builds_the_two_node_torchrun_command_and_resumes(tmp_path):
    run_dir = tmp_path / "runs" / "pt"
    p, sruns, scontrols = _sbatch(tmp_path, run_dir)
    assert p.returncode == 0, p.stdout + p.stderr
    assert len(sruns) == 1
    cmd = sruns[0]
    torchrun_at = cmd.index("torch.distributed.run")
    launcher, ssast = cmd[:torchrun_at + 1], cmd[torchrun_at + 1:]
    assert launcher[-3:] == [sys.executable, "-m", "torch.distributed.run"]
    for flag in ("--nnodes=2", "--nproc_per_node=4", "--rdzv_id=4242", "--rdzv_backend=c10d",
                 "--rdzv_endpoint=node-a:29500"):
        assert flag in ssast, (flag, ssast)
    assert any(a.startswith("--max-restarts=") for a in ssast)
    args = ssast[ssast.index("ssast") + 1:]
    assert args[:3] == ["pretrain", "-c", str(REPO / "configs/pretrain/patch_tiny.yaml")]
    assert f"train.run_dir={run_dir}" in args and "data.batch_size=3" in args
    assert args[args.index("--resume") + 1] == "auto"  # a torchrun restart inside the job resumes by itself
    assert not any(c[0] == "requeue" for c in scontrols)

    # a requeued job finds the run's checkpoint: it resumes that folder
    (run_dir / "checkpoints" / "step-00000010").mkdir(parents=True)
    (run_dir / "last").symlink_to("checkpoints/step-00000010")
    p, sruns, _ = _sbatch(tmp_path, run_dir)
    assert p.returncode == 0, p.stdout + p.stderr
    args = sruns[0][sruns[0].index("ssast") + 1:]
    assert args[args.index("--resume") + 1] == str(run_dir)
    assert "resuming" in p.stderr


@pytest.mark.parametrize("how", ["exit code", "marker"])
def test_preempt_sbatch_requeues_a_stopped_run(tmp_path, how):
    """A run that stopped on a signal (the ranks exit REQUEUE_EXIT; torchrun itself reports a failure, so the
    marker rank 0 wrote counts too) is requeued; a failure of another kind is not."""
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    code = REQUEUE_EXIT
    if how == "marker":
        (run_dir / MARKER).write_text(json.dumps({"step": 3, "signal": "SIGTERM"}))
        code = 1
    p, _, scontrols = _sbatch(tmp_path, run_dir, srun_exit=code)
    assert ["requeue", "4242"] in scontrols, p.stdout + p.stderr
    assert p.returncode == 0
    (run_dir / MARKER).unlink(missing_ok=True)
    p, _, scontrols = _sbatch(tmp_path, run_dir, srun_exit=1)
    assert not any(c[0] == "requeue" for c in scontrols) and p.returncode == 1


# -- 2. preemption under DDP ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("target", ["every rank", "rank 1 only"])
def test_preempt_ddp_stops_together_and_resumes_bitwise(corpus, tmp_path, reference, target):
    run_dir = tmp_path / "run"
    cmd = torchrun(pretrain_args(corpus, run_dir, "--resume", "auto"))
    agent = subprocess.Popen(cmd, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        wait_for(lambda: logged_step(run_dir) >= 3, "step 3", agent)
        pids = workers(agent)
        assert sorted(pids) == [0, 1]
        for rank, pid in pids.items():
            if target == "every rank" or rank == 1:
                os.kill(pid, signal.SIGUSR1 if target == "every rank" else signal.SIGTERM)
        out, _ = agent.communicate(timeout=120)
    finally:
        agent.kill()
    stopped = json.loads((run_dir / MARKER).read_text())["step"]
    assert 3 <= stopped < STEPS, out
    assert last_checkpoint(run_dir) == stopped  # the one checkpoint is the stop's (ckpt_every is 1000)
    for rank in (0, 1):  # both ranks stopped after the same step
        assert f"stopped by signal {'SIGUSR1' if target == 'every rank' else 'SIGTERM'} at step {stopped} " \
               f"(rank {rank})" in out, out
    assert f"(exitcode: {REQUEUE_EXIT})" in out, out  # torchrun's report of a rank that exited for requeue

    again = run(cmd)  # the SAME command: --resume auto finds the checkpoint
    assert again.returncode == 0, again.stdout + again.stderr
    assert f"at step {stopped}" in again.stdout + again.stderr
    assert not (run_dir / MARKER).exists()
    assert_same_weights(reference, run_dir / "final")


# -- 3. elastic restarts -------------------------------------------------------------------------------------------

def test_elastic_restart_after_sigkill_resumes_from_the_last_checkpoint(corpus, tmp_path, reference):
    run_dir = tmp_path / "run"
    cmd = torchrun(pretrain_args(corpus, run_dir, "train.ckpt_every=2", "--resume", "auto"),
                   extra=["--max-restarts=1", "--monitor-interval=0.2"])
    agent = subprocess.Popen(cmd, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        wait_for(lambda: last_checkpoint(run_dir) >= 4, "checkpoint 4", agent)
        os.kill(workers(agent)[1], signal.SIGKILL)
        out, _ = agent.communicate(timeout=300)
    finally:
        agent.kill()
    assert agent.returncode == 0, out
    assert "resumed from" in out, out  # the restarted group found the checkpoint with no flag added
    assert_same_weights(reference, run_dir / "final")


def test_elastic_resume_auto_resumes_only_this_run(corpus, tmp_path):
    cfg = load_config(None, ["task=pretrain", *TINY, f"data.train=[{corpus.pool}]", f"train.run_dir={tmp_path}/r"])
    run_dir = Path(cfg.train.run_dir)
    assert auto_resume(run_dir, cfg) is None  # nothing there: start
    from ssast.config import dump_config

    run_dir.mkdir()
    (run_dir / "config.yaml").write_text(dump_config(cfg))
    assert auto_resume(run_dir, cfg) is None  # this run, before its first checkpoint: start again
    ck = run_dir / "checkpoints" / "step-00000002"
    ck.mkdir(parents=True)
    (ck / "trainer.json").write_text("{}")
    (ck / "trainer.safetensors").write_bytes(b"")
    assert auto_resume(run_dir, cfg) == run_dir
    longer = load_config(None, ["task=pretrain", *TINY, f"data.train=[{corpus.pool}]", f"train.run_dir={run_dir}",
                                "train.steps=99"])
    assert auto_resume(run_dir, longer) == run_dir  # what a resume may change
    other = load_config(None, ["task=pretrain", *TINY, f"data.train=[{corpus.pool}]", f"train.run_dir={run_dir}",
                               "optim.lr=0.5"])
    with pytest.raises(ConfigError, match="another run.*optim.lr"):
        auto_resume(run_dir, other)


def test_elastic_resume_auto_starts_again_a_start_that_died_before_its_first_checkpoint(corpus, tmp_path, capsys):
    """The command line: a folder with this run's config and log but no checkpoint is started again (nothing to
    lose); the same folder is refused to another run, and left as it was."""
    from ssast.cli import main
    from ssast.config import dump_config

    args = ["pretrain", *TINY, f"data.train=[{corpus.pool}]", f"train.run_dir={tmp_path / 'r'}", "train.steps=2",
            "train.ckpt_every=1"]
    run_dir = tmp_path / "r"
    run_dir.mkdir()
    (run_dir / "config.yaml").write_text(dump_config(load_config(None, ["task=pretrain", *args[1:]])))
    (run_dir / "log.txt").write_text("a start that died\n")
    before = {p.name: p.read_bytes() for p in run_dir.iterdir()}
    assert main([*args, "optim.lr=0.5", "--resume", "auto"]) == 2
    assert "another run" in capsys.readouterr().err
    assert {p.name: p.read_bytes() for p in run_dir.iterdir()} == before
    assert main([*args, "--resume", "auto"]) == 0
    assert (run_dir / "final").is_dir() and "a start that died" not in (run_dir / "log.txt").read_text()


# -- 5. activation checkpointing -----------------------------------------------------------------------------------

@pytest.mark.parametrize("path", ["pretrain all", "pretrain visible", "finetune"])
def test_grad_checkpointing_gives_the_same_gradients(path):
    from ssast.models.encoder import set_grad_checkpointing
    from ssast.models.factory import build_classifier
    from ssast.models.pretrain import build_pretrain_model

    task = "finetune" if path == "finetune" else "pretrain"
    extra = ["model.pretrain_encoder=visible"] if path == "pretrain visible" else []
    cfg = load_config(None, [f"task={task}", *TINY, "model.drop_path=0.1", *extra])
    grads = []
    for on in (False, True):
        torch.manual_seed(0)
        model = build_pretrain_model(cfg.model) if task == "pretrain" else build_classifier(cfg.model, 5, None)[0]
        set_grad_checkpointing(model, on).train()
        torch.manual_seed(1)
        x = torch.randn(3, 64, 128)
        if task == "pretrain":
            out = model(x, generator=torch.Generator().manual_seed(2))
            loss = out.loss
        else:
            loss = model(x).logsumexp(-1).sum()
        loss.backward()
        grads.append({n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None})
    plain, ckpt = grads
    assert plain.keys() == ckpt.keys() and any("blocks" in n for n in plain)
    for n in plain:
        torch.testing.assert_close(ckpt[n], plain[n], rtol=0, atol=1e-6, msg=n)


def test_grad_checkpointing_is_on_in_training_only_where_asked(corpus, tmp_path):
    from ssast.train.engine import Trainer

    cfg = load_config(None, ["task=pretrain", *TINY, f"data.train=[{corpus.pool}]", f"train.run_dir={tmp_path}/r",
                             "train.steps=1", "train.grad_checkpointing=true"])
    trainer = Trainer(cfg)
    try:
        assert trainer.model.encoder.grad_checkpointing
    finally:
        trainer.close()
