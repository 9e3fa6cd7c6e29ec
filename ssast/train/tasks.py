"""What pretraining and fine-tuning do differently, as task objects the one training loop calls into.

A task builds its model, computes one batch's loss, evaluates, says how long a run is and what DDP must know, and has
hooks the loop calls after each optimiser step, after each epoch and at the end (with the trainer as argument), so the
loop in :mod:`ssast.train.engine` holds no task-specific branch.
"""
from __future__ import annotations

import copy
import math

import torch
import torch.nn.functional as F
from torch import nn

from ssast.config import Config, ConfigError
from ssast.train.scoring import predict_scores, uses_sigmoid, write_per_class_ap
from ssast.train.metrics import classification_metrics
from ssast.train.logging import reconstruction_figure
from ssast.train.runtime import Runtime

# Optimiser steps a fine-tuning on a small labelled set needs (the few-label recipe's train.min_steps, measured in
# benchmarks/label_efficiency.py); shorter runs without train.min_steps get a warning
FEW_LABEL_MIN_STEPS = 400


class PretrainTask:
    """Masked spectrogram patch modeling: the model returns its own loss and masked accuracy."""

    kind = "pretrain"  # the checkpoint kind
    monitor = "accuracy"  # masked-patch accuracy, for the plateau schedule

    def __init__(self, cfg: Config, rt: Runtime, labels, make_probe=None):
        self.cfg, self.rt = cfg, rt
        self.fixed_clip = None  # the clip of the reconstruction images
        self.make_probe = make_probe  # from the caller: train knows nothing of how an encoder is probed
        self.prober = None  # the frozen-encoder probe (train.probe_every), built before training starts

    @property
    def find_unused_parameters(self) -> bool:
        """A head switched off (weight 0) gets no gradient: DDP must then look for unused parameters."""
        return self.cfg.model.nce_weight <= 0 or self.cfg.model.mse_weight <= 0

    def build_model(self, from_checkpoint: bool = False) -> tuple[nn.Module, str]:
        """The model and how it was initialised; ``from_checkpoint`` (a resume) skips model.init, whose weights the
        checkpoint replaces anyway."""
        from ssast.models.factory import load_pretrained
        from ssast.models.pretrain import build_pretrain_model

        model = build_pretrain_model(self.cfg.model)
        info = "pretraining from random initialisation"
        if from_checkpoint:
            info = "weights from the checkpoint resumed"
        elif self.cfg.model.init and self.cfg.model.init != "scratch":
            src, meta = load_pretrained(self.cfg.model.init)
            if meta.kind != "pretrain":
                raise ConfigError(f"model.init={self.cfg.model.init}: continuing pretraining needs a pretraining checkpoint")
            model.load_state_dict(src.state_dict(), strict=True)
            info = f"pretraining continues from {self.cfg.model.init}"
        return model, info

    def length(self, batches_per_epoch: int | None, accum: int, exact: bool) -> tuple[int, int, bool]:
        """(optimiser steps, steps per schedule unit, whether the run counts epochs): pretraining counts steps."""
        if self.cfg.train.steps <= 0:
            raise ConfigError("train.steps: pretraining needs a positive number of steps")
        return self.cfg.train.steps, 1, False

    def loss(self, model, feats, labels, gen):
        out = model(feats, generator=gen)
        return out.loss, {"nce": out.nce, "mse": out.mse, "accuracy": out.accuracy}

    @torch.no_grad()
    def evaluate(self, model, batches, rt: Runtime, feature_fn) -> dict:
        """Masked accuracy and losses on held-out clips with masks from a fixed seed (comparable across evals)."""
        gen = torch.Generator(rt.device).manual_seed(1234)
        sums, n = {}, 0
        for batch in batches:
            feats = feature_fn(batch, train=False)
            with rt.autocast():
                out = model(feats, generator=gen)
            for k, v in {"loss": out.loss, "nce": out.nce, "mse": out.mse, "accuracy": out.accuracy}.items():
                sums[k] = sums.get(k, 0.0) + float(v) * feats.shape[0]
            n += feats.shape[0]
        return {k: v / max(n, 1) for k, v in sums.items()}

    # -- hooks ---------------------------------------------------------------------------------------------------
    def before_training(self, tr) -> None:
        if self.cfg.train.probe_every and tr.rt.is_main:
            self.prober = self.make_probe(self.cfg)  # now, so a missing list or label stops the run before it starts
        if self.cfg.train.image_every and tr.rt.is_main:
            # one fixed clip for the reconstruction images, taken before training starts
            source = tr.valid_loader or tr.train_loader
            source.set_epoch(0)
            batch = next(iter(source))
            self.fixed_clip = {k: batch[k][:1] for k in ("wave", "num_frames")}

    def after_step(self, tr, extras: dict, bad: torch.Tensor) -> None:
        cfg = self.cfg
        if cfg.train.image_every and tr.step % cfg.train.image_every == 0:
            self.log_reconstruction(tr)
        plateau = cfg.optim.schedule == "plateau" and tr.step % cfg.optim.plateau_every == 0
        evaluate = cfg.train.eval_every and tr.step % cfg.train.eval_every == 0
        if tr.valid_loader and (plateau or evaluate):
            metrics = tr.eval_and_record("valid", tr.valid_loader)  # fixed masks: comparable across checks
            if plateau:  # the authors' rule: ReduceLROnPlateau on the validation masked accuracy
                tr.schedule.report_metric(_from_rank0(metrics.get(self.monitor, 0.0), tr.rt))
        if cfg.train.probe_every and tr.step % cfg.train.probe_every == 0:
            self.probe(tr)

    def probe(self, tr) -> None:
        """Linear probe and k-NN of the current encoder on data.probe_train/probe_test (rank 0; the others wait),
        logged under probe/ in TensorBoard and into the history (metrics.json). Draws no random number."""
        if tr.rt.is_main:
            model = tr.ema.module if tr.ema else tr.model
            scalars, extras = self.prober.record(model.encoder, tr.feature_fn, tr.rt)
            tr.board.scalars("probe", scalars, tr.step)
            tr.history.append({"step": tr.step, "epoch": tr.epoch, "split": "probe", **scalars, **extras,
                               "train_s": round(tr.train_seconds, 2)})
            tr.progress.message(f"probe @ step {tr.step}: " + " ".join(
                f"{k} {v:.4g}" for k, v in scalars.items()))
        if tr.rt.distributed:
            torch.distributed.barrier()

    def after_epoch(self, tr) -> None:
        """Pretraining counts steps: an epoch's end changes nothing."""

    def final_model(self, tr) -> nn.Module:
        return tr.ema.module if tr.ema else tr.model

    def finish(self, tr, metrics: dict) -> None:
        """Nothing beyond the metrics for pretraining."""

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass

    def log_reconstruction(self, tr) -> None:
        """TensorBoard image of the fixed clip: input, mask and the generative head's reconstruction."""
        if not (tr.rt.is_main and self.fixed_clip is not None and hasattr(tr.model, "reconstruct")):
            return
        from ssast.models.tokenizer import unpatchify

        feats = tr.feature_fn(self.fixed_clip, train=False)
        was = tr.model.training
        tr.model.eval()
        with torch.no_grad(), tr.rt.autocast():
            mask, recon = tr.model.reconstruct(feats, generator=torch.Generator(tr.rt.device).manual_seed(7))
        tr.model.train(was)
        c = self.cfg.model
        ones = torch.ones(1, mask.shape[1], c.fshape * c.tshape, device=mask.device) * mask[..., None].float()
        mask_map = unpatchify(ones, c.fshape, c.tshape, feats.shape[2], feats.shape[1])
        img = reconstruction_figure(feats[0].float().cpu().numpy(), mask_map[0].cpu().numpy(),
                                    recon[0].float().cpu().numpy())
        tr.board.image("pretrain/reconstruction", img, tr.step)


class FinetuneTask:
    """Classification with CE (single-label, soft targets allowed for mixup) or BCE (multi-label)."""

    kind = "classifier"
    find_unused_parameters = False

    def __init__(self, cfg: Config, rt: Runtime, labels):
        self.cfg, self.rt, self.labels = cfg, rt, labels
        self.bce = uses_sigmoid(cfg)
        self.monitor = "mAP" if cfg.data.multilabel else "accuracy"
        self.wa_state, self.wa_count = None, 0  # running mean of the weights over the averaging epochs
        self.epochs = cfg.train.epochs  # raised by length() to reach train.min_steps
        self.notes: list[str] = []  # said when training starts
        self.ensemble = None  # train.epoch_ensemble: the running mean of the epochs' predictions (rank 0)
        self.ensemble_metrics: dict = {}  # its latest figures, also reported with the final metrics
        self.predictions = None  # (probabilities, targets, keys) of the latest evaluation, for the ensemble

    def build_model(self, from_checkpoint: bool = False) -> tuple[nn.Module, str]:
        from ssast.models.factory import build_classifier

        if from_checkpoint:  # the checkpoint holds every weight: model.init (maybe a relative path) is not needed
            return build_classifier(self.cfg.model, len(self.labels), "scratch")[0], "weights from the checkpoint resumed"
        return build_classifier(self.cfg.model, len(self.labels), self.cfg.model.init or None)

    def length(self, batches_per_epoch: int | None, accum: int, exact: bool) -> tuple[int, int, bool]:
        """(optimiser steps, steps per epoch, whether the run counts epochs). Shard streams have no exact length
        (``exact`` false): an epoch ends when the shards do, and the schedule uses the count their index gives
        (class-balanced repeats keep its expectation)."""
        if self.cfg.train.epochs <= 0:
            raise ConfigError("train.epochs: fine-tuning needs a positive number of epochs")
        if not batches_per_epoch:
            raise ConfigError("data.train: fine-tuning from these shards needs their clip count; give shard "
                              "folders written by `ssast prepare` (with index.json) or tars with their sidecars")
        per_step = max(1, batches_per_epoch // accum)
        train = self.cfg.train
        self.epochs = max(train.epochs, -(-train.min_steps // per_step))
        steps = self.epochs * per_step
        if self.epochs > train.epochs:
            self.notes.append(f"train.epochs raised from {train.epochs} to {self.epochs}: {per_step} steps per epoch, "
                              f"train.min_steps={train.min_steps}")
        elif steps < FEW_LABEL_MIN_STEPS and not train.min_steps:
            self.notes.append(
                f"warning: this fine-tuning takes only {steps} optimiser steps ({self.epochs} epochs x {per_step}); "
                f"small labelled sets need about {FEW_LABEL_MIN_STEPS} (set train.min_steps={FEW_LABEL_MIN_STEPS}, "
                "or use the few-label recipe of configs/finetune/custom_template.yaml)")
        return steps, per_step, not exact

    def loss(self, model, feats, labels, gen):
        logits = model(feats).float()
        if self.bce:
            loss = F.binary_cross_entropy_with_logits(logits, labels)
        else:
            loss = torch.sum(-labels * F.log_softmax(logits, dim=-1), dim=-1).mean()
        return loss, {}

    def evaluate(self, model, batches, rt: Runtime, feature_fn) -> dict:
        scores, targets, keys = predict_scores(model, batches, rt.autocast, feature_fn, sigmoid=self.bce)
        self.predictions = (scores, targets, keys)
        return classification_metrics(scores, targets, self.cfg.data.multilabel)

    # -- hooks ---------------------------------------------------------------------------------------------------
    def before_training(self, tr) -> None:
        for note in self.notes:
            tr.progress.message(note)

    def after_step(self, tr, extras: dict, bad: torch.Tensor) -> None:
        pass

    def after_epoch(self, tr) -> None:
        """Weight averaging, validation (the best model by the monitored metric) and a checkpoint per epoch."""
        train = self.cfg.train
        epoch = tr.epoch  # 1-based count of finished epochs, as the authors number them
        if train.wa_start and train.wa_start <= epoch <= train.wa_end:
            state = {k: v.detach().float().cpu().clone() for k, v in tr.model.state_dict().items()}
            if self.wa_state is None:
                self.wa_state, self.wa_count = state, 1
            else:
                self.wa_count += 1
                for k in self.wa_state:
                    self.wa_state[k] += (state[k] - self.wa_state[k]) / self.wa_count
        # a run whose epochs train.min_steps raised validates and saves as often as the configured epoch count would
        every = -(-self.epochs // max(1, train.epochs))
        if epoch % every and epoch < self.epochs:
            return
        if tr.valid_loader is not None:
            metrics = tr.eval_and_record("valid", tr.valid_loader)
            value = metrics.get(self.monitor, -math.inf)
            if value > tr.best:
                tr.best = value
                tr.save_model("best", tr.ema.module if tr.ema else None)
        if train.epoch_ensemble:
            self.add_to_ensemble(tr)
        tr.save()

    def add_to_ensemble(self, tr) -> None:
        """The epoch's predictions on the validation list (the test list when there is none, as the authors evaluate
        AudioSet's eval set every epoch) join the running ensemble; its figures go to TensorBoard and the history."""
        from ssast.train.checkpoints import step_dir
        from ssast.train.epoch_ensemble import EpochEnsemble

        split, loader = ("valid", tr.valid_loader) if tr.valid_loader is not None else ("test", tr.test_loader)
        if loader is None:
            raise ConfigError("train.epoch_ensemble needs data.valid or data.test to predict on every epoch")
        if split == "test":
            tr.eval_and_record("test", loader)
        if not tr.rt.is_main:
            return
        if self.ensemble is None:
            self.ensemble = EpochEnsemble(tr.run_dir, self.cfg.data.multilabel)
        checkpoint = str(step_dir(tr.run_dir, tr.step).relative_to(tr.run_dir))  # tr.save() writes it next
        self.ensemble_metrics = self.ensemble.add(tr.epoch, *self.predictions, split=split, checkpoint=checkpoint)
        tr.board.scalars(split, self.ensemble_metrics, tr.step)
        tr.history.append({"step": tr.step, "epoch": tr.epoch, "split": f"{split}_ensemble", **self.ensemble_metrics})
        tr.progress.message(f"{split} ensemble of {self.ensemble.count} epochs: " + " ".join(
            f"{k.removeprefix('ensemble_')} {v:.4f}" for k, v in self.ensemble_metrics.items()
            if k != "ensemble_epochs"))

    def final_model(self, tr) -> nn.Module:
        if self.wa_state is None:
            return tr.ema.module if tr.ema else tr.model
        model = copy.deepcopy(tr.model)
        model.load_state_dict({k: v.to(tr.model.state_dict()[k].dtype) for k, v in self.wa_state.items()})
        tr.progress.message(f"weight averaging over {self.wa_count} epochs ({self.cfg.train.wa_start}-"
                            f"{self.cfg.train.wa_end})")
        return model

    def finish(self, tr, metrics: dict) -> None:
        metrics.update(self.ensemble_metrics)  # the last epoch's running ensemble beside the final model's figures
        per_class = metrics.pop("per_class_ap", None)
        if per_class is not None and self.labels is not None:
            write_per_class_ap(tr.run_dir / "per_class_ap.csv", self.labels, per_class)

    def state_dict(self) -> dict:
        return {"wa_state": self.wa_state, "wa_count": self.wa_count}

    def load_state_dict(self, state: dict) -> None:
        self.wa_state, self.wa_count = state["wa_state"], state["wa_count"]


def _from_rank0(value: float, rt: Runtime) -> float:
    """Rank 0's value on every rank (only rank 0 evaluates), so all ranks keep the same lr schedule."""
    if not rt.distributed:
        return float(value)
    t = torch.tensor([float(value)], device=rt.device)
    torch.distributed.broadcast(t, 0)
    return float(t.item())


def build_task(cfg: Config, rt: Runtime, labels, make_probe=None):
    """``make_probe(cfg)`` builds the probe of ``train.probe_every`` (see :func:`ssast.train.engine.train`)."""
    return PretrainTask(cfg, rt, labels, make_probe) if cfg.task == "pretrain" else FinetuneTask(cfg, rt, labels)
