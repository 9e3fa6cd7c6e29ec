"""A sampler that is a pure function of (seed, epoch), split across DDP ranks, and can resume mid-epoch.

Order: a permutation seeded by (seed, epoch) when shuffling, the natural order otherwise, or draws with replacement
from per-item weights (class-balanced sampling, source mixing). Rank r of W takes positions r, r+W, r+2W, ... of the
epoch's order (as DistributedSampler does). When ``pad`` (training), the order is extended by wrapping so every rank
gets the same count and DDP steps stay in lockstep; without it (evaluation) nothing is repeated and ranks may differ
by one item.
"""
from __future__ import annotations

import math
from typing import Iterator, Sequence

import numpy as np
import torch
from torch.utils.data import Sampler


def _torch_generator(*entropy: int) -> torch.Generator:
    """A torch Generator seeded from a tuple of integers (mixed with numpy's SeedSequence so nearby seeds differ)."""
    seed = int(np.random.SeedSequence([int(e) for e in entropy]).generate_state(1, dtype=np.uint64)[0] >> 1)
    g = torch.Generator()
    g.manual_seed(seed)
    return g


class ResumableSampler(Sampler[int]):
    """Deterministic, rank-split, optionally weighted sampler; ``set_epoch(e, start_batch)`` resumes exactly."""

    def __init__(
        self,
        num_items: int,
        *,
        shuffle: bool = True,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
        pad: bool | None = None,
        weights: Sequence[float] | np.ndarray | torch.Tensor | None = None,
        num_samples: int | None = None,
        batch_size: int = 1,
    ) -> None:
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is outside world_size {world_size}")
        self.num_items = int(num_items)
        self.shuffle = shuffle
        self.seed = int(seed)
        self.rank = rank
        self.world_size = world_size
        self.pad = shuffle if pad is None else pad
        self.batch_size = batch_size
        self.weights = None
        if weights is not None:
            w = torch.as_tensor(np.asarray(weights, dtype=np.float64))
            if w.shape != (self.num_items,):
                raise ValueError(f"weights has shape {tuple(w.shape)}, expected ({self.num_items},)")
            if not torch.isfinite(w).all() or (w < 0).any() or w.sum() <= 0:
                raise ValueError("weights must be finite, non-negative and not all zero")
            self.weights = w
        self.num_samples = self.num_items if num_samples is None else int(num_samples)  # epoch length (all ranks)
        self.epoch = 0
        self.start = 0  # items of this rank skipped at the start of the epoch

    @property
    def per_rank(self) -> int:
        """Items this rank sees in a full epoch."""
        n, w = self.num_samples, self.world_size
        if self.pad:
            return math.ceil(n / w)
        return len(range(self.rank, n, w))

    def set_epoch(self, epoch: int, start_batch: int = 0, batch_size: int | None = None) -> None:
        """Select the epoch and skip this rank's first ``start_batch`` batches (exact resume)."""
        self.epoch = int(epoch)
        if batch_size is not None:
            self.batch_size = int(batch_size)
        self.start = min(int(start_batch) * self.batch_size, self.per_rank)

    def epoch_order(self) -> torch.Tensor:
        """The whole epoch's item order, identical on every rank."""
        n = self.num_samples
        if self.num_items == 0:
            return torch.zeros(0, dtype=torch.long)
        if self.weights is not None:
            g = _torch_generator(self.seed, self.epoch, 1)
            return torch.multinomial(self.weights, n, replacement=True, generator=g)
        if self.shuffle:
            g = _torch_generator(self.seed, self.epoch, 0)
            order = torch.randperm(self.num_items, generator=g)
        else:
            order = torch.arange(self.num_items)
        if n != self.num_items:  # a longer or shorter epoch than the dataset: wrap or cut
            order = order.repeat(math.ceil(n / self.num_items))[:n]
        return order

    def indices(self) -> list[int]:
        """This rank's items for the current epoch, after the resume skip."""
        order = self.epoch_order()
        if self.pad and len(order):
            total = self.per_rank * self.world_size
            if total > len(order):
                order = torch.cat([order, order.repeat(math.ceil(total / len(order)))[: total - len(order)]])
        mine = order[self.rank :: self.world_size]
        return mine[self.start :].tolist()

    def __iter__(self) -> Iterator[int]:
        return iter(self.indices())

    def __len__(self) -> int:
        return self.per_rank - self.start


def class_balanced_weights(label_matrix: np.ndarray | torch.Tensor, eps: float = 0.01) -> np.ndarray:
    """Per-item sampling weights that favour rare classes (the AudioSet recipe).

    Each class c gets weight 1000 / (count_c + eps), counted over the dataset; an item's weight is the sum of the
    weights of its labels (the authors' ``gen_weight_file.py``, scale included). Items without labels get 0 and are
    never drawn, as in the recipe.
    """
    y = np.asarray(label_matrix, dtype=np.float64)
    if y.ndim != 2:
        raise ValueError(f"label_matrix must be (items, classes), got shape {y.shape}")
    class_w = 1000.0 / (y.sum(axis=0) + eps)
    return (y > 0).astype(np.float64) @ class_w
