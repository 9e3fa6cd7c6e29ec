"""Stream combinators for mixing sources by weight: a map-style dataset read as a stream, and a weighted interleave.

:func:`ssast.data.loader.build_loader` uses them when any source is shards: each list or folder becomes a
:class:`MapStream`, and :class:`WeightedInterleave` picks each next clip's source at random by weight. MapStream
splits its clips by rank and DataLoader worker; its order and the interleave's choices come from generators seeded by
the epoch, so a mix is reproducible.
"""
from __future__ import annotations

from typing import Iterator, Sequence

import numpy as np
from torch.utils.data import IterableDataset, get_worker_info

from ssast.data.dataset import ClipDataset


class MapStream(IterableDataset):
    """A map-style dataset read as a stream (to be mixed with shards): per-epoch order, split by rank and worker."""

    def __init__(
        self, dataset: ClipDataset, *, train: bool, seed: int, rank: int, world_size: int, endless: bool
    ) -> None:
        self.dataset = dataset
        self.train = train
        self.seed = seed
        self.rank = rank
        self.world_size = world_size
        self.endless = endless
        self.epoch = 0
        self.num_clips = len(dataset)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)
        self.dataset.set_epoch(epoch)

    def __iter__(self) -> Iterator[dict]:
        info = get_worker_info()
        wid, nw = (info.id, info.num_workers) if info is not None else (0, 1)
        n = len(self.dataset)
        rounds = 0
        while n:
            if self.train:
                order = np.random.default_rng((self.seed, self.epoch, rounds, 17)).permutation(n)
            else:
                order = np.arange(n)
            for i in order[self.rank :: self.world_size][wid::nw]:
                yield self.dataset[int(i)]
            rounds += 1
            if not self.endless:
                return


class WeightedInterleave(IterableDataset):
    """Streams mixed by weight: each next clip comes from source s with probability w_s / sum(w).

    The choice is drawn from a generator seeded by (seed, epoch, rank, worker), so the mix is reproducible. A finite
    source that runs out is dropped (the others continue); with ``endless`` it is restarted instead.
    """

    def __init__(
        self, sources: Sequence[IterableDataset], weights: Sequence[float], *, seed: int, rank: int, endless: bool
    ) -> None:
        if len(weights) != len(sources) or any(w < 0 for w in weights) or sum(weights) <= 0:
            raise ValueError("one non-negative weight per source is needed, not all zero")
        self.sources = list(sources)
        self.weights = [float(w) for w in weights]
        self.seed = seed
        self.rank = rank
        self.endless = endless
        self.epoch = 0

    @property
    def num_clips(self) -> int | None:
        """Clips in one finite pass over every source (None when a source's count is unknown)."""
        counts = [getattr(s, "num_clips", None) for s in self.sources]
        return None if self.endless or None in counts else sum(counts)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)
        for s in self.sources:
            if hasattr(s, "set_epoch"):
                s.set_epoch(epoch)

    def __iter__(self) -> Iterator[dict]:
        info = get_worker_info()
        wid = info.id if info is not None else 0
        rng = np.random.default_rng((self.seed, self.epoch, self.rank, wid, 29))
        its = [iter(s) for s in self.sources]
        w = np.asarray(self.weights, dtype=np.float64)
        live = w > 0
        while live.any():
            p = np.where(live, w, 0.0)
            s = int(rng.choice(len(its), p=p / p.sum()))
            try:
                yield next(its[s])
            except StopIteration:
                if self.endless:
                    its[s] = iter(self.sources[s])
                    try:
                        yield next(its[s])
                        continue
                    except StopIteration:  # an empty source
                        pass
                live[s] = False
