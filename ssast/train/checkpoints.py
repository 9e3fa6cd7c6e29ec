"""Run directories, atomic checkpoints (model + trainer state), pruning, and the `last` pointer for resume.

A run directory holds::

    config.yaml             the resolved config
    .lock                   held (flock) by the run using the directory; the kernel drops it if the process dies
    checkpoints/step-N/     model.safetensors + model.json (rebuildable model) + trainer.safetensors/.json
                            (exact-resume state: tensors and plain data, never pickle)
    last                    symlink to the newest complete checkpoint (replaced atomically)
    best/                   best model by the validation metric (fine-tuning)
    final/                  the model at the end (averaged weights when weight averaging is on)
    tb/                     TensorBoard events
    metrics.json            final metrics

A checkpoint directory only gets its final name once complete, and `last` only moves after that, so a crash at
any moment leaves the previous checkpoint usable.
"""
from __future__ import annotations

import dataclasses
import fcntl
import os
import re
import shutil
import sys
from pathlib import Path

from ssast.atomic import atomic_write_text, fsync_path
from ssast.config import Config, ConfigError, load_config
from ssast.train.run_folder import check_links, remove_run
from ssast.train.state_io import STATE as TRAINER_STATE

# What a resumed run may change: how long it runs, how often it logs, saves and evaluates, and how it reads data.
# Anything else (model, features, augmentation, optimiser, training data, batch, seed, precision) would make the
# resumed run a different run than the checkpoint's.
RESUME_MAY_CHANGE = (
    "train.steps", "train.epochs", "train.min_steps", "train.run_dir", "train.log_every", "train.ckpt_every",
    "train.keep_last", "train.eval_every", "train.image_every", "train.max_bad_steps", "train.progress", "train.device",
    "train.grad_checkpointing",  # recomputes activations: the same gradients, less memory
    "data.valid", "data.test", "data.num_workers", "data.eval_batch_size", "data.strict", "data.allow_missing",
    # the frozen-encoder probe reads the encoder and its own lists, and draws no random number: it changes no weight
    "train.probe_every", "data.probe_train", "data.probe_test",
)
# Pretraining reads labels only for the probe, so its label CSV may change too.
RESUME_MAY_CHANGE_PRETRAIN = ("data.label_csv",)


class RunLock:
    """Exclusive use of a run directory: ``flock`` on ``RUN/.lock``, released on close or when the process dies,
    so a crashed run never leaves it stuck, and a second run on the same directory is refused."""

    def __init__(self, run_dir: Path) -> None:
        self.path = Path(run_dir) / ".lock"
        # O_NOFOLLOW: a `.lock` link would make the pid overwrite whatever file it points to
        try:
            self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o644)
        except OSError as e:
            raise ConfigError(f"train.run_dir {run_dir}: cannot lock {self.path} ({e.strerror}); a run writes only "
                              f"real paths inside its own folder") from None
        try:
            fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(self.fd, 32, 0).decode(errors="replace").strip() or "unknown"
            os.close(self.fd)
            raise ConfigError(f"train.run_dir {run_dir}: another ssast run (pid {holder}) is using this directory; "
                              f"wait for it to end or choose another train.run_dir") from None
        os.ftruncate(self.fd, 0)
        os.pwrite(self.fd, str(os.getpid()).encode(), 0)

    def release(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)  # closing the descriptor drops the flock
            self.fd = -1


def open_run_dir(run_dir: Path, config_text: str, stream=None, *, replace: bool = False) -> RunLock:
    """Create and lock a run directory, remove what killed saves left there (and with ``replace``, an overwrite, the
    old run's own files), then write ``config_text``. Called once every check has passed: a refused start writes
    nothing. Returns the held lock."""
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ConfigError(f"train.run_dir {run_dir}: cannot create the run directory ({e.strerror or e}); "
                          f"choose another train.run_dir") from None
    lock = RunLock(run_dir)
    try:
        check_links(run_dir, removing=replace)  # again under the lock: nothing changed it in between
        say = lambda text: print(text, file=stream or sys.stderr)  # noqa: E731
        if replace and (removed := remove_run(run_dir)):
            say(f"--overwrite: removed the earlier run's {', '.join(removed)} from {run_dir}")
        for stale in clean_stale(run_dir):
            say(f"removed {stale}, left by an interrupted save")
        (run_dir / "checkpoints").mkdir(exist_ok=True)
        atomic_write_text(run_dir / "config.yaml", config_text)
    except BaseException:
        lock.release()
        raise
    return lock


def check_resume_config(run_dir: Path, cfg: Config) -> None:
    """Refuse, before anything is written, a resume whose config changes more than RESUME_MAY_CHANGE allows."""
    conflicts = resume_conflicts(load_config(run_dir / "config.yaml"), cfg)
    if conflicts:
        may = RESUME_MAY_CHANGE + (RESUME_MAY_CHANGE_PRETRAIN if cfg.task == "pretrain" else ())
        raise ConfigError(f"--resume {run_dir}: cannot change {'; '.join(conflicts)}. A resume may change only "
                          f"{', '.join(may)}; nothing was written")


def clean_stale(run_dir: Path) -> list[Path]:
    """Remove what killed saves left behind (half-written ``*.tmp-*`` folders, ``*.old-*`` copies, temporary files
    and links); call only while holding the run's lock. Returns what was removed."""
    removed = []
    for folder in (Path(run_dir), Path(run_dir) / "checkpoints"):
        if not folder.is_dir():
            continue
        for p in folder.iterdir():
            name = p.name
            if re.search(r"\.(tmp|old)-[^/]+$", name) and p.is_dir() and not p.is_symlink():
                shutil.rmtree(p, ignore_errors=True)
            elif name.startswith(".") and (name.endswith(".tmp") or name.startswith(".last.")) and (
                    p.is_symlink() or not p.is_dir()):
                p.unlink(missing_ok=True)
            else:
                continue
            removed.append(p)
    return removed


def resume_conflicts(saved: Config, given: Config) -> list[str]:
    """The keys outside RESUME_MAY_CHANGE whose values differ between a run's saved config and a resume's config."""
    def flat(cfg: Config) -> dict:
        out = {}
        for section, values in dataclasses.asdict(cfg).items():
            if isinstance(values, dict):
                out.update({f"{section}.{k}": v for k, v in values.items()})
            else:
                out[section] = values
        return out

    a, b = flat(saved), flat(given)
    may = RESUME_MAY_CHANGE + (RESUME_MAY_CHANGE_PRETRAIN if saved.task == "pretrain" == given.task else ())
    return [f"{k} (saved {a[k]!r}, given {b[k]!r})" for k in a if k not in may and a[k] != b.get(k)]


def point_last(run_dir: Path, target: Path) -> None:
    """Atomically make run_dir/last a relative symlink to ``target``."""
    link = run_dir / "last"
    tmp = run_dir / f".last.{os.getpid()}"
    if tmp.is_symlink() or tmp.exists():
        tmp.unlink()
    os.symlink(os.path.relpath(target, run_dir), tmp)
    os.replace(tmp, link)
    fsync_path(run_dir)


def step_dir(run_dir: Path, step: int) -> Path:
    return Path(run_dir) / "checkpoints" / f"step-{step:08d}"


def list_checkpoints(run_dir: Path) -> list[Path]:
    """Complete step checkpoints, oldest first (incomplete ones have no trainer state yet)."""
    root = Path(run_dir) / "checkpoints"
    if not root.is_dir():
        return []
    found = [p for p in root.iterdir() if re.fullmatch(r"step-\d{8}", p.name) and (p / TRAINER_STATE).is_file()]
    return sorted(found)


def prune(run_dir: Path, keep_last: int, protect: set[Path] = frozenset()) -> None:
    """Delete all but the newest ``keep_last`` step checkpoints (never one in ``protect``)."""
    ckpts = list_checkpoints(run_dir)
    for p in ckpts[: max(0, len(ckpts) - keep_last)]:
        if p.resolve() not in {q.resolve() for q in protect}:
            shutil.rmtree(p, ignore_errors=True)


def resolve_resume(run_dir: Path) -> Path:
    """The checkpoint to resume from: what `last` points to, else the newest complete one."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise FileNotFoundError(f"--resume {run_dir}: no such run directory")
    if not (run_dir / "config.yaml").is_file():
        raise FileNotFoundError(f"--resume {run_dir}: not a run directory (no config.yaml)")
    last = run_dir / "last"
    if last.exists() and (last / TRAINER_STATE).is_file():
        return last.resolve()
    ckpts = list_checkpoints(run_dir)
    if not ckpts:
        raise FileNotFoundError(f"--resume {run_dir}: the run has no complete checkpoint to resume from")
    return ckpts[-1]


def auto_resume(run_dir: Path, cfg: Config) -> Path | None:
    """``--resume auto``: ``run_dir`` when it holds a complete checkpoint of this same run (a saved config that
    differs from ``cfg`` only where a resume may), None when there is nothing to resume (no run there yet, or this
    run stopped before its first checkpoint). A folder holding another run is refused: never resumed, never replaced."""
    run_dir = Path(run_dir)
    saved = run_dir / "config.yaml"
    if not saved.is_file():
        return None
    try:
        conflicts = resume_conflicts(load_config(saved), cfg)
    except ConfigError as e:
        raise ConfigError(f"--resume auto: {run_dir} holds a config this version cannot read ({e}); "
                          f"choose another train.run_dir") from None
    if conflicts:
        raise ConfigError(f"--resume auto: {run_dir} holds another run ({'; '.join(conflicts[:3])}); it is neither "
                          f"resumed nor replaced: choose another train.run_dir")
    last = run_dir / "last"
    return run_dir if (last.exists() and (last / TRAINER_STATE).is_file()) or list_checkpoints(run_dir) else None


def model_meta(cfg: Config, kind: str, labels, step: int, epoch: int):
    """The typed checkpoint metadata (:class:`ssast.models.checkpoint.CheckpointMeta`) of a run's model now."""
    from ssast.models.checkpoint import CheckpointMeta

    return CheckpointMeta(
        kind=kind, model=cfg.model, audio=cfg.audio, multilabel=cfg.data.multilabel, step=step, epoch=epoch,
        task=cfg.task, labels=list(labels.names) if labels is not None else None,
        label_ids=list(labels.ids) if labels is not None else None)



def restore(trainer, path: Path) -> None:
    """Load checkpoint ``path`` (weights and trainer state, checked against its schema) into ``trainer``; a part
    that does not fit this run ends in one line naming it."""
    from ssast.models.checkpoint import CheckpointError, load_state
    from ssast.train.state_io import check_state, read_state

    st = read_state(path)  # JSON + safetensors: a foreign run directory cannot execute anything here
    check_state(st, path)
    t = trainer
    own = st.get("ranks") or []  # every rank's RNGs (DDP); a checkpoint of another world size gives rank 0's
    own = own[t.rt.rank] if len(own) == t.rt.world_size else {"rng": st["rng"], "gen": st["gen"]}
    parts = (
        ("model.safetensors", lambda: t.model.load_state_dict(load_state(path), strict=True)),
        ("optimizer", lambda: t.optimizer.load_state_dict(st["optimizer"])),
        ("schedule", lambda: t.schedule.load_state_dict(st["schedule"])),
        ("gen", lambda: t.gen.set_state(own["gen"])),
        ("ema", lambda: t.ema.module.load_state_dict(st["ema"]) if t.ema and st["ema"] is not None else None),
        ("task", lambda: t.task.load_state_dict(st["task"])),
    )
    for name, load in parts:
        try:
            load()
        except (ValueError, KeyError, TypeError, RuntimeError, IndexError) as e:
            raise CheckpointError(f"{path}: {name} does not fit this run ({type(e).__name__}: "
                                  f"{str(e).splitlines()[0][:200] if str(e) else ''})") from None
    t.step, t.epoch, t.batch_in_epoch = st["step"], st["epoch"], st["batch_in_epoch"]
    t.saved_step = t.step  # the checkpoint resumed from is this step's
    t.bad_total, t.best, t.history, t.elapsed = st["bad_total"], st["best"], st["history"], st["elapsed"]
    t._restored_rng = own["rng"]  # applied when the loop starts, after everything set-up may draw
