"""Stopping on a signal, on every rank at the same step: SLURM preemption and time limits, cloud notices, Ctrl-C.

SLURM sends SIGTERM (or, with ``--signal``, SIGUSR1) to every task, but a cloud notice or a user's ``kill`` may reach
one rank only. Each rank notes the signal it got; once per optimiser step the ranks take the maximum of their notes
(one integer all-reduce), so every rank sees the same value after the same step, and all stop there together: rank 0
writes one whole checkpoint, every rank waits for it, then all exit with REQUEUE_EXIT. The all-reduce of step s is
read at step s + 1, so the host never waits on it while the device is still busy with step s (a stop comes one step
after the signal). ``preempted.json`` in the run folder tells a batch script that the run stopped to be requeued.
"""
from __future__ import annotations

import contextlib
import json
import signal
from pathlib import Path

import torch
import torch.distributed as dist

from ssast.atomic import atomic_write_text
from ssast.train.checkpoints import step_dir
from ssast.train.runtime import Runtime

# EX_TEMPFAIL (sysexits.h): "a temporary failure; the user is invited to retry". pretrain/run_slurm.sbatch requeues on it.
REQUEUE_EXIT = 75
# Ctrl-C keeps the shell's convention (128 + SIGINT)
INTERRUPT_EXIT = 130
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGUSR1)
MARKER = "preempted.json"


class TrainingStopped(RuntimeError):
    """The run ended early on purpose (signal) or because the loss kept being non-finite; a checkpoint tells where.

    ``exit_code`` is what the command exits with (2: something to fix; REQUEUE_EXIT / INTERRUPT_EXIT: a signal)."""

    def __init__(self, message: str, exit_code: int = 2) -> None:
        super().__init__(message)
        self.exit_code = exit_code


class StopAgreement:
    """The signal (if any) that every rank stops for after the current step; see the module's docstring."""

    def __init__(self, rt: Runtime) -> None:
        self.rt = rt
        self.local = 0  # the first stop signal this process received
        self.pending: tuple | None = None  # (work, flag) of the last step's all-reduce

    def _on_signal(self, signum, frame) -> None:
        self.local = self.local or int(signum)

    @contextlib.contextmanager
    def installed(self):
        """Catch the stop signals while training, then give the old handlers back."""
        old = {s: signal.signal(s, self._on_signal) for s in STOP_SIGNALS}
        try:
            yield self
        finally:
            for s, h in old.items():
                signal.signal(s, h)
            if self.pending is not None:  # a collective left in flight must finish before the group goes away
                with contextlib.suppress(RuntimeError):
                    self.pending[0].wait()
                self.pending = None

    def poll(self) -> int:
        """Call once per optimiser step on every rank: the signal number all ranks stop for now, 0 to go on."""
        if not self.rt.distributed:
            return self.local
        flag = torch.tensor([self.local], dtype=torch.int32, device=self.rt.device)
        work = dist.all_reduce(flag, op=dist.ReduceOp.MAX, async_op=True)
        previous, self.pending = self.pending, (work, flag)
        if previous is None:
            return 0
        previous[0].wait()
        return int(previous[1].item())


def stop_for_signal(trainer, signum: int) -> None:
    """Save one checkpoint (rank 0), mark the run as preempted, let every rank wait for both, and stop."""
    run_dir = Path(trainer.run_dir)
    name = signal.Signals(signum).name
    if trainer.saved_step != trainer.step:  # not when train.ckpt_every saved this very step
        trainer.save()
    if trainer.rt.is_main:
        saved = str(step_dir(run_dir, trainer.step))
        atomic_write_text(run_dir / MARKER, json.dumps({"step": trainer.step, "signal": name, "checkpoint": saved}))
    if trainer.rt.distributed:  # no rank may exit (and make torchrun stop the others) before the save is whole
        dist.barrier()
    code = INTERRUPT_EXIT if signum == signal.SIGINT else REQUEUE_EXIT
    raise TrainingStopped(f"stopped by signal {name} at step {trainer.step} (rank {trainer.rt.rank}); run the same "
                          f"command with --resume auto, or --resume {run_dir}, to continue", exit_code=code)


def clear_marker(run_dir: Path) -> None:
    """A run that starts again is no longer a preempted one."""
    (Path(run_dir) / MARKER).unlink(missing_ok=True)
