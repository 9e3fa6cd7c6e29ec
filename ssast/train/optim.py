"""Optimiser construction (parameter groups with layer-wise lr decay and a head multiplier) and lr schedules."""
from __future__ import annotations

import math

import torch
from torch import nn

from ssast.config import OptimConfig


def param_groups(model: nn.Module, cfg: OptimConfig) -> list[dict]:
    """Groups keyed by (lr scale, weight decay, and with ``head_only_steps`` whether they are the head's).

    1-D parameters (norms, biases) and the model's ``no_weight_decay()`` names get no weight decay. With
    ``layer_decay < 1`` the layer of each parameter comes from the model's timm-style ``group_matcher`` (via timm's
    ``group_parameters``) and its lr is scaled by ``layer_decay ** (last_layer - layer)``. Parameters under ``head.``
    get ``head_lr_mult`` on top.
    """
    skip = set(model.no_weight_decay()) if hasattr(model, "no_weight_decay") else set()
    layer_of: dict[str, int] = {}
    num_layers = 1
    if cfg.layer_decay < 1.0 and hasattr(model, "group_matcher"):
        from timm.models import group_parameters

        layer_of = group_parameters(model, model.group_matcher(coarse=False), reverse=True)
        num_layers = max(layer_of.values()) + 1  # timm puts what no rule matches (the head) in the last layer
    groups: dict[tuple[float, float, bool], dict] = {}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        wd = 0.0 if (p.ndim <= 1 or name in skip) else cfg.weight_decay
        scale = 1.0
        if layer_of:
            scale = cfg.layer_decay ** (num_layers - 1 - layer_of.get(name, num_layers - 1))
        head = name.startswith("head.")
        if head:
            scale *= cfg.head_lr_mult
        # the head its own group only where it must be (the groups of older checkpoints stay as they were)
        key = (scale, wd, head and cfg.head_only_steps > 0)
        group = groups.setdefault(key, {"params": [], "lr_scale": scale, "weight_decay": wd, "head": key[2]})
        group["params"].append(p)
    return list(groups.values())


def build_optimizer(model: nn.Module, cfg: OptimConfig, device: torch.device) -> torch.optim.Optimizer:
    """Adam or AdamW with the fused implementation (one kernel over all parameters, CPU and CUDA alike)."""
    cls = torch.optim.AdamW if cfg.optimizer == "adamw" else torch.optim.Adam
    return cls(param_groups(model, cfg), lr=cfg.lr, betas=tuple(cfg.betas), fused=device.type in ("cpu", "cuda"))


class LRSchedule:
    """Linear warm-up, then constant / cosine / step (start, every, factor) / plateau.

    ``unit`` is what the step schedule counts: epochs for fine-tuning (the authors' recipes), steps for pretraining.
    With ``head_only_steps`` N, every group but the head's has lr 0 for steps below N, then warms up again over
    ``warmup_steps`` (LP-FT: a head fitted on the frozen features first, so that the encoder's first updates follow a
    useful head instead of a random one). A function of the step alone, so resume stays exact.
    The plateau schedule multiplies the lr by ``plateau_factor`` after more than ``plateau_patience`` checks in a row
    (one every ``plateau_every`` steps) without an improvement of the validation masked accuracy, as the authors do.
    """

    def __init__(self, optimizer: torch.optim.Optimizer, cfg: OptimConfig, total_steps: int, steps_per_epoch: int):
        self.opt, self.cfg = optimizer, cfg
        self.total_steps = max(1, total_steps)
        self.steps_per_epoch = max(1, steps_per_epoch)
        self.plateau_scale = 1.0
        self.best_metric = -math.inf
        self.bad_checks = 0

    def factor(self, step: int) -> float:
        c = self.cfg
        warm = min(1.0, (step + 1) / c.warmup_steps) if c.warmup_steps > 0 else 1.0
        if c.schedule == "cosine":
            progress = min(1.0, step / self.total_steps)
            floor = c.min_lr / c.lr if c.lr > 0 else 0.0
            base = floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress))
        elif c.schedule == "step":
            unit = step // self.steps_per_epoch  # epochs (fine-tuning) or steps (steps_per_epoch = 1)
            base = c.step_factor ** ((unit - c.step_start) // c.step_every + 1) if unit >= c.step_start else 1.0
        elif c.schedule == "plateau":
            base = self.plateau_scale
        else:
            base = 1.0
        return warm * base

    def apply(self, step: int) -> float:
        """Set every group's lr for this optimiser step; returns the base lr."""
        lr = self.cfg.lr * self.factor(step)
        body = self.encoder_factor(step)
        for g in self.opt.param_groups:
            g["lr"] = lr * g.get("lr_scale", 1.0) * (1.0 if g.get("head") else body)
        return lr

    def encoder_factor(self, step: int) -> float:
        """The encoder's share of the lr under ``head_only_steps``: 0 while frozen, then a fresh linear warm-up."""
        frozen, warm = self.cfg.head_only_steps, self.cfg.warmup_steps
        if step < frozen:
            return 0.0
        return min(1.0, (step - frozen + 1) / warm) if frozen and warm > 0 else 1.0

    def report_metric(self, value: float) -> None:
        """Plateau check, with torch's ReduceLROnPlateau(mode="max", threshold_mode="rel") semantics: a value better
        than best * (1 + threshold) resets the count; after more than ``plateau_patience`` checks in a row without
        one, the lr scale is multiplied by ``plateau_factor`` and the count starts again."""
        c = self.cfg
        if value > self.best_metric * (1 + c.plateau_threshold):
            self.best_metric, self.bad_checks = value, 0
        else:
            self.bad_checks += 1
        if self.bad_checks > c.plateau_patience:
            self.plateau_scale *= c.plateau_factor
            self.bad_checks = 0

    def state_dict(self) -> dict:
        return {"plateau_scale": self.plateau_scale, "best_metric": self.best_metric, "bad_checks": self.bad_checks}

    def load_state_dict(self, state: dict) -> None:
        self.plateau_scale = state["plateau_scale"]
        self.best_metric = state["best_metric"]
        self.bad_checks = state["bad_checks"]
