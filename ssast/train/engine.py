"""The one training engine for pretraining (steps, masked patch modeling) and fine-tuning (epochs, classification).

What differs between the two lives in task objects (:mod:`ssast.train.tasks`): the model, one batch's loss,
evaluation, the run's length and the hooks after a step, an epoch and the run. Everything here is shared: device and
precision, DDP, accumulation, clipping, schedules, EMA, checkpoints and exact resume, signals, non-finite losses,
logging.
"""
from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import time
from pathlib import Path

import torch
from safetensors import SafetensorError
from torch import nn

from ssast.atomic import atomic_write_text, disk_full
from ssast.config import Config, ConfigError, dump_config
from ssast.train.scoring import load_label_set
from ssast.train import checkpoints as ck
from ssast.train.logging import Board, Progress
from ssast.train.optim import LRSchedule, build_optimizer
from ssast.train.batches import training_inputs
from ssast.train.run_folder import check_run_folder
from ssast.train.state_io import write_state
from ssast.train.tasks import build_task
from ssast.train.preemption import StopAgreement, TrainingStopped, clear_marker, stop_for_signal
from ssast.train.runtime import (
    gather_to_main,
    peak_memory_mb,
    rng_state,
    seed_everything,
    set_rng_state,
    setup_runtime,
)


__all__ = ["Trainer", "TrainingStopped", "train"]


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


# ---------------------------------------------------------------------------------------------------------------
# The trainer


class Trainer:
    def __init__(self, cfg: Config, *, resume: str | None = None, stream=None, probe=None, overwrite: bool = False):
        if cfg.train.probe_every and probe is None:
            raise ConfigError("train.probe_every: this caller gives no probe; run `ssast pretrain`, or pass "
                              "probe=ssast.evaluate.probe.TrainingProbe to train()", ["train.probe_every"])
        self.make_probe = probe
        if resume:  # a resume writes only into the directory it resumes, whatever the config says
            cfg = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, run_dir=str(resume)))
        self.cfg = cfg
        self.run_dir = Path(cfg.train.run_dir)
        self.rt = setup_runtime(cfg.train.device, cfg.train.precision, cfg.model.dim)
        seed_everything(cfg.train.seed + self.rt.rank)
        # every check reads only: a refused or failed start writes nothing (run_folder.py says what may be written);
        # rank 0 owns the folder (the other ranks would see its files and its lock)
        if self.rt.is_main:
            check_run_folder(self.run_dir, resume=bool(resume), overwrite=overwrite)
        self.resume_from = ck.resolve_resume(self.run_dir) if resume else None
        if resume:
            ck.check_resume_config(self.run_dir, cfg)
        self.lock = None
        try:
            self._build(stream)
            if self.rt.is_main:  # rank 0 owns the directory: created, locked, cleaned; the config is written
                self.lock = ck.open_run_dir(self.run_dir, dump_config(cfg), stream, replace=overwrite and not resume)
                clear_marker(self.run_dir)  # a run that starts again is no longer a preempted one
            self.board = Board(self.run_dir / "tb") if self.rt.is_main else Board(None)
            self.progress = Progress(self.total_steps, cfg.train.progress if self.rt.is_main else "none", stream,
                                     self.run_dir / "log.txt" if self.rt.is_main else None)
        except BaseException:
            self.close()  # the directory is free again
            raise

    def _build(self, stream) -> None:
        """Everything after the run directory is ours: data, model, optimiser, schedule, restored state."""
        from ssast.audio.features import FeatureExtractor
        from ssast.data.loader import build_loader, holdout_fraction
        from ssast.models.encoder import set_grad_checkpointing

        cfg, rt = self.cfg, self.rt
        self.labels = load_label_set(cfg)
        self.task = build_task(cfg, rt, self.labels, self.make_probe)

        self.train_loader = build_loader(cfg, "train", labels=self.labels, rank=rt.rank, world_size=rt.world_size)
        self.held_out = holdout_fraction(cfg)  # pretraining validation taken from the training sources
        self.valid_loader = build_loader(cfg, "valid", labels=self.labels) if cfg.data.valid or self.held_out else None
        self.test_loader = build_loader(cfg, "test", labels=self.labels) if cfg.data.test else None
        for loader in (self.train_loader, self.valid_loader, self.test_loader):  # every split, before any step
            loader is None or loader.preflight()
        self.features = FeatureExtractor(cfg.audio, cfg.augment).to(rt.device)

        # a resume takes the weights from its checkpoint: model.init (maybe a relative path) is never read again
        model, self.init_info = self.task.build_model(from_checkpoint=bool(self.resume_from))
        self.model = set_grad_checkpointing(model, cfg.train.grad_checkpointing or cfg.model.grad_checkpointing)
        self.model.to(rt.device)
        self.num_params = count_parameters(self.model)
        self.optimizer = build_optimizer(self.model, cfg.optim, rt.device)
        # fused Adam skips an update on the device when told `found_inf`; other implementations need a host check
        self.skip_on_device = bool(self.optimizer.defaults.get("fused"))
        self.step_model = self.model
        if rt.distributed:
            self.step_model = nn.parallel.DistributedDataParallel(
                self.model, device_ids=[rt.device.index] if rt.device.type == "cuda" else None,
                find_unused_parameters=self.task.find_unused_parameters,
            )
        if cfg.train.compile:
            self.step_model = torch.compile(self.step_model)

        try:
            self.batches_per_epoch = len(self.train_loader)
        except TypeError:  # a shard stream
            self.batches_per_epoch = 0
        # fine-tuning on a shard stream runs whole epochs (its step count is only estimated); all else runs steps
        self.total_steps, steps_per_unit, self.by_epochs = self.task.length(
            self.batches_per_epoch or self.train_loader.estimated_batches(), cfg.optim.accum_steps,
            exact=bool(self.batches_per_epoch))
        self.schedule = LRSchedule(self.optimizer, cfg.optim, self.total_steps, steps_per_unit)
        self.gen = torch.Generator(rt.device).manual_seed(cfg.train.seed * 1000 + rt.rank)

        self.ema = None
        if cfg.train.ema > 0:
            from timm.utils import ModelEmaV3

            self.ema = ModelEmaV3(self.model, decay=cfg.train.ema)

        self.step = 0
        self.epoch = 0
        self.batch_in_epoch = 0
        self.bad_total = 0
        self.best = -math.inf
        self.history: list[dict] = []
        self.elapsed = 0.0
        self.train_seconds = 0.0  # training time at the current step (elapsed, not yet logged part included)
        self._restored_rng = None
        self.saved_step = -1  # the step of the last save() call, the same on every rank
        if self.resume_from:
            ck.restore(self, self.resume_from)
        self.stopper = StopAgreement(rt)

    # -- features ------------------------------------------------------------------------------------------------
    def feature_fn(self, batch: dict, train: bool, mix=None) -> torch.Tensor:
        wave = batch["wave"].to(self.rt.device, non_blocking=True)
        num_frames = batch["num_frames"].to(self.rt.device, non_blocking=True)
        return self.features(wave, num_frames, train=train, generator=self.gen if train else None, mix=mix)

    def _prepare_batch(self, batch: dict) -> tuple[torch.Tensor, torch.Tensor | None]:
        return training_inputs(batch, self.feature_fn, self.cfg.augment, self.gen, self.rt.device)

    # -- state ---------------------------------------------------------------------------------------------------
    def _trainer_state(self) -> dict:
        return {
            "optimizer": self.optimizer.state_dict(),
            "schedule": self.schedule.state_dict(),
            "rng": rng_state(),
            "gen": self.gen.get_state(),
            "step": self.step,
            "epoch": self.epoch,
            "batch_in_epoch": self.batch_in_epoch,
            "bad_total": self.bad_total,
            "best": self.best,
            "history": self.history,
            "elapsed": self.elapsed,
            "ema": self.ema.module.state_dict() if self.ema else None,
            "task": self.task.state_dict(),
            "skipped": dict(getattr(self.train_loader, "skipped", {}) or {}),
        }

    def _model_meta(self):
        return ck.model_meta(self.cfg, self.task.kind, self.labels, self.step, self.epoch)

    def save(self) -> Path | None:
        """Write checkpoints/step-N (model + trainer state, one atomic folder), move `last`, prune old ones.

        Rank 0 only. A failed write (a full disk) leaves no partial folder and ends the run with one line that names
        the last complete checkpoint."""
        ranks = gather_to_main(self.rt, {"rng": rng_state(), "gen": self.gen.get_state()})  # every rank calls save
        self.saved_step = self.step
        if not self.rt.is_main:
            return None
        from ssast.models.checkpoint import save_checkpoint

        d = ck.step_dir(self.run_dir, self.step)
        state = {**self._trainer_state(), "ranks": ranks}
        try:
            save_checkpoint(d, self.model, self._model_meta(), write_more=lambda folder: write_state(folder, state))
        except (OSError, SafetensorError) as e:
            last = ck.list_checkpoints(self.run_dir)
            why = "no space left on the device" if disk_full(e) else f"{type(e).__name__}: {e}"
            then = (f"the last complete checkpoint is {last[-1]}; free space and resume with --resume {self.run_dir}"
                    if last else "no checkpoint was complete, so there is nothing to resume; free space and start "
                    "again with --overwrite")
            raise TrainingStopped(f"{why} while saving step {self.step} to {d}; {then}") from None
        ck.point_last(self.run_dir, d)
        ck.prune(self.run_dir, self.cfg.train.keep_last, protect={d})
        return d

    def save_model(self, name: str, model: nn.Module | None = None) -> Path | None:
        if not self.rt.is_main:
            return None
        from ssast.models.checkpoint import save_checkpoint

        d = self.run_dir / name
        save_checkpoint(d, model or self.model, self._model_meta())
        return d

    # -- evaluation ----------------------------------------------------------------------------------------------
    def evaluate(self, loader, model: nn.Module | None = None) -> dict:
        model = model or (self.ema.module if self.ema else self.model)
        was_training = model.training
        model.eval()
        loader.set_epoch(0)
        loader.reset_counts()
        try:
            return self.task.evaluate(model, loader, self.rt, self.feature_fn)
        finally:
            model.train(was_training)

    def _skip_note(self, split: str, loader) -> str:
        """The evaluation pass's skip summary, told to the user; empty when every clip was used."""
        if not sum(loader.skipped.values()):
            return ""
        note = f"{split}: {loader.skip_summary()} (scored on the rest)"
        self.progress.message(note)
        return note

    # -- the loop ------------------------------------------------------------------------------------------------
    def fit(self) -> dict:
        cfg, rt = self.cfg, self.rt
        self.progress.message(
            f"{cfg.task}: {self.num_params / 1e6:.2f}M parameters, device {rt.device}, {rt.precision}, "
            f"world size {rt.world_size}, {self.total_steps} steps; {self.init_info}"
        )
        if rt.note:
            self.progress.message(rt.note)
        if self.held_out:
            self.progress.message(f"validation: no data.valid, so {self.held_out:.1%} of the training clips (a fixed "
                                  f"hash of their paths; whole shards for shards) are held out and never trained on")
        if self.resume_from:
            self.progress.message(f"resumed from {self.resume_from} at step {self.step}; this run writes only into "
                                  f"{self.run_dir}")
        try:
            with self.stopper.installed():
                return self._fit()
        finally:
            self.board.close()
            self.progress.close()
            self.close()

    def close(self) -> None:
        """Give up the run directory (the lock); the trainer cannot save after this."""
        if self.lock is not None:
            self.lock.release()
            self.lock = None

    def _fit(self) -> dict:
        cfg, rt = self.cfg, self.rt
        accum = cfg.optim.accum_steps
        sums: dict[str, torch.Tensor] = {}
        count = 0
        window_clips, window_start = 0, time.time()
        zero = torch.zeros((), dtype=torch.long, device=rt.device)
        streak, window_streak, window_bad = zero.clone(), zero.clone(), zero.clone()  # non-finite losses
        self.step_model.train()
        micro = 0
        self.task.before_training(self)
        while not self._done():
            self.train_loader.set_epoch(self.epoch, start_batch=self.batch_in_epoch)
            if self._restored_rng is not None:
                set_rng_state(self._restored_rng)
                self._restored_rng = None
            for batch in self.train_loader:
                # the loader's own count includes batches it dropped because every clip was bad
                self.batch_in_epoch = getattr(self.train_loader, "position", self.batch_in_epoch + 1)
                feats, labels = self._prepare_batch(batch)
                sync = (micro + 1) % accum == 0
                ctx = self.step_model.no_sync() if (rt.distributed and not sync) else contextlib.nullcontext()
                with ctx:
                    with rt.autocast():
                        loss, extras = self.task.loss(self.step_model, feats, labels, self.gen)
                    (loss / accum).backward()
                micro += 1
                window_clips += feats.shape[0] * rt.world_size
                if not sync:
                    continue
                # A non-finite loss skips the update without a host sync: fused Adam reads `found_inf` on the device
                # and leaves weights, moments and its step count alone. Streaks are checked when logging.
                bad = ~torch.isfinite(loss.detach())
                if self.skip_on_device:
                    self.optimizer.found_inf = bad.float()
                elif bool(bad):  # an optimiser without found_inf support: check on the host
                    self.optimizer.zero_grad(set_to_none=True)
                lr = self.schedule.apply(self.step)
                grad_norm = None
                if cfg.optim.grad_clip > 0:
                    grad_norm = nn.utils.clip_grad_norm_(self.model.parameters(), cfg.optim.grad_clip)
                self.optimizer.step()
                self.optimizer.zero_grad(set_to_none=True)
                if self.ema:
                    self.ema.update(self.model, step=self.step)
                self.step += 1
                streak = (streak + 1) * bad
                window_streak = torch.maximum(window_streak, streak)
                window_bad = window_bad + bad

                scalars = {"loss": loss.detach(), **{k: v.detach() for k, v in extras.items()}}
                if grad_norm is not None:
                    scalars["grad_norm"] = grad_norm.detach()
                for k, v in scalars.items():
                    sums[k] = sums.get(k, 0) + torch.where(bad, 0.0, v.float())
                count = count + (~bad).float()

                if self.step % cfg.train.log_every == 0 or self.step == self.total_steps:
                    now = time.time()
                    n_bad, longest = int(window_bad), int(window_streak)
                    if n_bad:
                        self.bad_total += n_bad
                        self.progress.message(f"step {self.step}: {n_bad} non-finite losses since the last log, "
                                              f"updates skipped (longest run {longest})")
                    if longest >= cfg.train.max_bad_steps:
                        raise TrainingStopped(
                            f"the loss was not finite for {longest} steps in a row (by step {self.step}); no update "
                            f"was applied for them. The last checkpoint is {self.run_dir / 'last'}. Lower optim.lr "
                            f"or check the data, then resume."
                        )
                    n_good = float(count)
                    values = {k: float(v) / n_good for k, v in sums.items()} if n_good else {}
                    self.elapsed += now - window_start
                    values.update(lr=lr, samples_per_s=window_clips / max(now - window_start, 1e-9),
                                  memory_mb=peak_memory_mb(rt.device), epoch=self.epoch)
                    self.board.scalars("train", values, self.step)
                    self.progress.update(self.step, {k: values[k] for k in values if k != "memory_mb"})
                    sums, count, window_clips, window_start = {}, 0, 0, now
                    window_bad, window_streak = zero.clone(), zero.clone()
                # evaluations, probes and checkpoints are not training time: samples/s and elapsed leave them out
                paused = time.time()
                self.train_seconds = self.elapsed + (paused - window_start)
                self.task.after_step(self, extras, bad)
                if self.step % cfg.train.ckpt_every == 0 and self.step < self.total_steps:
                    self.save()
                window_start += time.time() - paused
                stop = self.stopper.poll()  # every rank gets the same answer at the same step
                if stop:
                    stop_for_signal(self, stop)
                if not self.by_epochs and self.step >= self.total_steps:
                    break
            else:
                # the epoch ran out (its evaluations are not training time)
                paused = time.time()
                self._end_epoch()
                window_start += time.time() - paused
                continue
            if self.batches_per_epoch and self.batch_in_epoch >= self.batches_per_epoch:
                self._end_epoch()
            break
        return self._finish()

    def _done(self) -> bool:
        return self.epoch >= self.task.epochs if self.by_epochs else self.step >= self.total_steps

    def _end_epoch(self) -> None:
        self.epoch += 1
        self.batch_in_epoch = 0
        self.task.after_epoch(self)

    def eval_and_record(self, split: str, loader) -> dict:
        """Evaluate on rank 0, log to TensorBoard and the history; every rank waits for it."""
        metrics = {}
        if self.rt.is_main:
            metrics = self.evaluate(loader)
            scalar = {k: v for k, v in metrics.items() if isinstance(v, float)}
            self.board.scalars(split, scalar, self.step)
            skipped = self._skip_note(split, loader)
            self.history.append({"step": self.step, "epoch": self.epoch, "split": split, **scalar,
                                 "train_s": round(self.train_seconds, 2),
                                 **({"skipped_clips": skipped} if skipped else {})})
            self.progress.message(f"{split} @ step {self.step} (epoch {self.epoch}): "
                                  + " ".join(f"{k} {v:.4f}" for k, v in scalar.items()))
        if self.rt.distributed:
            torch.distributed.barrier()
        return metrics

    def _finish(self) -> dict:
        cfg, rt = self.cfg, self.rt
        final_model = self.task.final_model(self)
        if self.saved_step != self.step:  # the epoch end may have saved it (a decision every rank takes alike)
            self.save()
        final_dir = self.save_model("final", final_model)
        result = {"task": cfg.task, "steps": self.step, "epochs": self.epoch, "time_s": self.elapsed,
                  "params": self.num_params, "precision": rt.precision, "device": str(rt.device),
                  "skipped_steps": self.bad_total}
        if rt.is_main:
            eval_loader = self.test_loader or self.valid_loader
            if eval_loader is not None:
                metrics = self.evaluate(eval_loader, final_model)
                self.task.finish(self, metrics)
                result["final"] = metrics
                result["final_split"] = "test" if self.test_loader else "valid"
                skipped = self._skip_note(result["final_split"], eval_loader)
                if skipped:
                    result["final_skipped_clips"] = skipped
                self.progress.message("final " + " ".join(f"{k} {v:.4f}" for k, v in metrics.items()))
            result["history"] = self.history
            if hasattr(self.train_loader, "skip_summary"):
                summary = self.train_loader.skip_summary()
                result["skipped_clips"] = summary
                if summary:
                    self.progress.message(summary)
            atomic_write_text(self.run_dir / "metrics.json", json.dumps(result, indent=2))
            hp = {"task": cfg.task, "size": cfg.model.size, "fshape": cfg.model.fshape, "tshape": cfg.model.tshape,
                  "pretrain_encoder": cfg.model.pretrain_encoder, "lr": cfg.optim.lr, "batch": cfg.data.batch_size,
                  "precision": rt.precision}
            final_scalars = {k: v for k, v in result.get("final", {}).items() if isinstance(v, float)}
            self.board.hparams(hp, final_scalars or {"steps": float(self.step)})
            self.progress.message(f"run directory: {self.run_dir} (final model: {final_dir}; TensorBoard: {self.run_dir / 'tb'})")
        return result


def train(cfg: Config, *, resume: str | None = None, stream=None, probe=None, overwrite: bool = False) -> dict:
    """Run one pretraining or fine-tuning job described by ``cfg``; returns the final metrics.

    With ``resume`` (a run directory) the run continues there, whatever ``cfg.train.run_dir`` says. ``probe(cfg)``
    builds the frozen-encoder probe that ``train.probe_every`` runs (``record(encoder, feature_fn, rt)`` gives the
    scalars to log and the per-layer scores); the callers above ``train`` pass
    :class:`ssast.evaluate.probe.TrainingProbe`. A new run refuses a folder that holds a run unless ``overwrite``,
    which removes that run's own files first (:mod:`ssast.train.run_folder`)."""
    trainer = Trainer(cfg, resume=resume, stream=stream, probe=probe, overwrite=overwrite)
    return trainer.fit()
