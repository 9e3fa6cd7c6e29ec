"""The classifiers of the frozen-encoder probe, on fixed clip embeddings: linear, k-NN and a learned layer mix.

Everything here is deterministic and draws no random number: the linear models start at zero and are fitted by
full-batch L-BFGS (a convex problem for the linear probe, so one optimum whatever the start), the k-NN has no
randomness, and the held-out part of a training set is chosen by a fixed hash of the clip keys.

- Features are standardised with the fitting set's per-dimension mean and std (so one weight-decay grid suits every
  layer and model width).
- Linear probe: softmax regression (single-label, cross-entropy) or one sigmoid per class (multi-label, BCE), with an
  L2 penalty ``weight_decay / 2 * ||W||^2`` on the mean loss; the weight decay is chosen on the selection split.
- k-NN: cosine similarity of the standardised embeddings, the k nearest fitting clips vote with weights
  ``exp(similarity / 0.07)`` (DINO's weighting); k is chosen on the selection split.
- Layer mix (SUPERB's featurizer): ``softmax(s)``-weighted sum of the standardised per-layer embeddings, learned jointly
  with a linear head (same loss and penalty); the weight decay is chosen on the selection split.
"""
from __future__ import annotations

import contextlib
import zlib
from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

WEIGHT_DECAYS = (1e-5, 1e-4, 1e-3, 1e-2, 1e-1, 1.0)
KNN_KS = (1, 3, 5, 10, 20)
KNN_TEMPERATURE = 0.07
MAX_ITER = 100  # L-BFGS iterations per fit (on separable data the weakest decays may stop short of their optimum)
SMALL_PROBLEM = 2**24  # clips x width x classes below which the fits run on one CPU thread


def probe_metric(multilabel: bool) -> str:
    """The probe's metric: mAP for multi-label tasks, accuracy otherwise."""
    return "mAP" if multilabel else "accuracy"


def score(scores: np.ndarray, targets: np.ndarray, multilabel: bool) -> float:
    """Accuracy (arg-max against arg-max) or mAP over classes with positives and negatives."""
    from ssast.train.metrics import accuracy, multilabel_metrics

    if multilabel:
        return float(multilabel_metrics(scores, targets)["mAP"])
    return accuracy(scores, targets)


def held_out_part(keys: Sequence[str], labels: np.ndarray, multilabel: bool,
                  fraction: float = 0.2) -> tuple[np.ndarray, np.ndarray]:
    """(fit indices, held-out indices) of a training set: per class for single-label sets (so every class with two or
    more clips keeps one to fit on and gives at least one), else overall; the clips with the smallest CRC-32 of their
    key go out, so the split never depends on a seed or on the order of the list."""
    order = sorted(range(len(keys)), key=lambda i: (zlib.crc32(str(keys[i]).encode()), i))
    groups = [order] if multilabel else [[i for i in order if labels[i].argmax() == c] for c in
                                         range(labels.shape[1])]
    held: list[int] = []
    for g in groups:
        if len(g) >= 2:
            held += g[: min(len(g) - 1, max(1, round(fraction * len(g))))]
    mask = np.zeros(len(keys), bool)
    mask[held] = True
    return np.flatnonzero(~mask), np.flatnonzero(mask)


@dataclass
class Standardizer:
    """Per-dimension z-scoring with statistics of the fitting set (dimensions with no spread are left centred)."""

    mean: Tensor
    std: Tensor

    @classmethod
    def fit(cls, x: Tensor) -> Standardizer:
        return cls(x.mean(0), x.std(0, unbiased=False).clamp_min(1e-6))

    def __call__(self, x: Tensor) -> Tensor:
        return (x - self.mean) / self.std


def _loss_fn(multilabel: bool) -> Callable[[Tensor, Tensor], Tensor]:
    if multilabel:
        return F.binary_cross_entropy_with_logits
    return lambda logits, y: F.cross_entropy(logits, y.argmax(1))


def _lbfgs(params: list[Tensor], objective: Callable[[], Tensor]) -> None:
    """Minimise ``objective`` over ``params`` with full-batch L-BFGS (strong Wolfe line search)."""
    opt = torch.optim.LBFGS(params, lr=1.0, max_iter=MAX_ITER, history_size=20, tolerance_grad=1e-7,
                            tolerance_change=1e-10, line_search_fn="strong_wolfe")

    def closure() -> Tensor:
        opt.zero_grad()
        loss = objective()
        loss.backward()
        return loss

    with torch.enable_grad():
        opt.step(closure)


@dataclass
class LinearHead:
    weight: Tensor  # (D, C)
    bias: Tensor  # (C,)

    def logits(self, x: Tensor) -> Tensor:
        return x @ self.weight + self.bias


def fit_linear(x: Tensor, y: Tensor, multilabel: bool, weight_decay: float,
               start: LinearHead | None = None) -> LinearHead:
    """Softmax (or per-class sigmoid) regression with an L2 penalty, on standardised features x (N, D), y (N, C),
    from zero or from ``start`` (the problem is convex: the start changes only how many iterations it takes)."""
    w = torch.zeros(x.shape[1], y.shape[1], device=x.device) if start is None else start.weight.clone()
    b = torch.zeros(y.shape[1], device=x.device) if start is None else start.bias.clone()
    w.requires_grad_(True)
    b.requires_grad_(True)
    loss = _loss_fn(multilabel)
    _lbfgs([w, b], lambda: loss(x @ w + b, y) + 0.5 * weight_decay * (w * w).sum())
    return LinearHead(w.detach(), b.detach())


@dataclass
class LayerMixHead:
    layer_logits: Tensor  # (L,)
    head: LinearHead

    @property
    def layer_weights(self) -> Tensor:
        return torch.softmax(self.layer_logits, 0)

    def logits(self, x: Tensor) -> Tensor:
        """x: (N, L, D) standardised per layer."""
        return self.head.logits(torch.einsum("l,nld->nd", self.layer_weights, x))


def fit_layer_mix(x: Tensor, y: Tensor, multilabel: bool, weight_decay: float) -> LayerMixHead:
    """SUPERB's weighted sum of layers with a linear head: softmax layer weights (starting equal) and the head, jointly."""
    s = torch.zeros(x.shape[1], device=x.device, requires_grad=True)
    w = torch.zeros(x.shape[2], y.shape[1], device=x.device, requires_grad=True)
    b = torch.zeros(y.shape[1], device=x.device, requires_grad=True)
    loss = _loss_fn(multilabel)

    def objective() -> Tensor:
        mixed = torch.einsum("l,nld->nd", torch.softmax(s, 0), x)
        return loss(mixed @ w + b, y) + 0.5 * weight_decay * (w * w).sum()

    _lbfgs([s, w, b], objective)
    return LayerMixHead(s.detach(), LinearHead(w.detach(), b.detach()))


def knn_scores(ref_x: Tensor, ref_y: Tensor, x: Tensor, k: int) -> Tensor:
    """(M, C) class scores of queries x from their k most cosine-similar reference clips, weighted exp(sim / T)."""
    sims = F.normalize(x, dim=1) @ F.normalize(ref_x, dim=1).T
    top, idx = sims.topk(min(k, ref_x.shape[0]), dim=1)
    votes = torch.exp((top - 1.0) / KNN_TEMPERATURE)  # shifted by the largest possible similarity: no overflow
    return (votes[..., None] * ref_y[idx]).sum(1) / votes.sum(1, keepdim=True)


def _scores(logits: Tensor, multilabel: bool) -> np.ndarray:
    return (torch.sigmoid(logits) if multilabel else torch.softmax(logits, -1)).cpu().numpy()


def _choose(candidates: Sequence, fit_and_score: Callable[[object], float]) -> object:
    """The candidate with the best selection score; ties keep the earlier one (candidates come most regularised
    first: the strongest weight decay, the largest k)."""
    best, best_score = candidates[0], -np.inf
    for c in candidates:
        s = fit_and_score(c)
        if s > best_score:
            best, best_score = c, s
    return best


@dataclass
class Split:
    """One split's embeddings (N, L, D) and multi-hot targets (N, C), as tensors on the fitting device."""

    x: Tensor
    y: Tensor

    def take(self, idx: np.ndarray) -> Split:
        i = torch.as_tensor(idx, device=self.x.device)
        return Split(self.x[i], self.y[i])


def standardised(train: Split, *others: Split) -> list[Tensor]:
    """Each layer of ``train`` and of ``others`` z-scored with that layer's statistics on ``train``: (N, L, D) each."""
    stds = [Standardizer.fit(train.x[:, i]) for i in range(train.x.shape[1])]
    return [torch.stack([s(o.x[:, i]) for i, s in enumerate(stds)], 1) for o in (train, *others)]


@contextlib.contextmanager
def cpu_threads_for(x: Tensor, classes: int):
    """One CPU thread for small problems: their many tiny operations run far slower with several threads (on a busy
    2-core machine, 12 ms instead of 0.17 ms per cross-entropy of 30 x 6 logits); the thread count is restored."""
    small = x.device.type == "cpu" and x.shape[0] * x.shape[-1] * max(classes, x.shape[1]) < SMALL_PROBLEM
    before = torch.get_num_threads()
    if small:
        torch.set_num_threads(1)
    try:
        yield
    finally:
        if small:
            torch.set_num_threads(before)


def probe_layers(fit: Split, select: Split, refit: Split, test: Split, multilabel: bool) -> dict:
    """Per layer the linear probe and the k-NN, and the layer mix: hyper-parameters chosen by fitting on ``fit`` and
    scoring on ``select``; the chosen setting is fitted again on ``refit`` (``fit`` itself, or ``fit`` plus the
    held-out part when that was taken from the training set) and scored on ``test``."""
    with cpu_threads_for(refit.x, refit.y.shape[1]):
        return _probe_layers(fit, select, refit, test, multilabel)


def _probe_layers(fit: Split, select: Split, refit: Split, test: Split, multilabel: bool) -> dict:
    targets, sel_targets = test.y.cpu().numpy(), select.y.cpu().numpy()
    fx, sx = standardised(fit, select)
    rx, tx = standardised(refit, test)
    decays = sorted(WEIGHT_DECAYS, reverse=True)

    def on(y: np.ndarray, logits: Tensor) -> float:
        return score(_scores(logits, multilabel), y, multilabel)

    same = refit is fit  # a real validation split: the fits on `fit` are the final ones
    layers = []
    for i in range(fx.shape[1]):
        heads: dict[float, LinearHead] = {}

        def linear_on_select(wd: float) -> float:
            # decays come strong to weak: each fit starts where the previous one ended (a regularisation path)
            heads[wd] = fit_linear(fx[:, i], fit.y, multilabel, wd, start=next(reversed(heads.values()), None))
            return on(sel_targets, heads[wd].logits(sx[:, i]))

        wd = _choose(decays, linear_on_select)
        head = heads[wd] if same else fit_linear(rx[:, i], refit.y, multilabel, wd, start=heads[wd])
        linear = on(targets, head.logits(tx[:, i]))
        ks = sorted((k for k in KNN_KS if k <= fx.shape[0]), reverse=True) or [1]
        k = _choose(ks, lambda k: score(knn_scores(fx[:, i], fit.y, sx[:, i], k).cpu().numpy(), sel_targets,
                                        multilabel))
        knn = score(knn_scores(rx[:, i], refit.y, tx[:, i], k).cpu().numpy(), targets, multilabel)
        layers.append({"layer": i, "linear": linear, "weight_decay": wd, "knn": knn, "k": k})

    mixes: dict[float, LayerMixHead] = {}

    def mix_on_select(wd: float) -> float:
        mixes[wd] = fit_layer_mix(fx, fit.y, multilabel, wd)
        return on(sel_targets, mixes[wd].logits(sx))

    wd = _choose(decays, mix_on_select)
    mix = mixes[wd] if same else fit_layer_mix(rx, refit.y, multilabel, wd)
    weighted = {"linear": on(targets, mix.logits(tx)), "weight_decay": wd,
                "layer_weights": [round(float(v), 4) for v in mix.layer_weights]}
    return {"layers": layers, "weighted": weighted}
