"""Reading WebDataset tar shards: ``ShardDataset`` streams them back, ``resolve_shards`` / ``read_index`` find them.

The layout is described in :mod:`ssast.data.shard_format`; :mod:`ssast.data.shard_writer` writes it (``ssast prepare``).
Reading uses webdataset's tar iterators (``tar_file_iterator`` + ``group_by_keys``), its URL brace expansion and its
shuffle buffer; shard selection per rank and DataLoader worker is done here (not with ``split_by_node`` /
``split_by_worker``) because the rank is given explicitly and the clip-level fallback needs the same plan.
"""
from __future__ import annotations

import json
import os
import random
import zlib
from collections import Counter
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch
import webdataset as wds
from webdataset import tariterators
from webdataset.shardlists import expand_urls

from ssast.audio.fbank import max_samples, window_hop
from ssast.audio.io import AudioError, load_audio
from ssast.config import AudioConfig
from ssast.data.dataset import bad_item
from ssast.data.manifest import DataError, LabelSet
from ssast.data.remote import RETRIES, RETRY_WAIT_S, beside, is_url, local_path, read_url, sidecar_url, stream_samples
from ssast.data.shard_format import INDEX_FORMAT, INDEX_NAME, sidecar_path

AUDIO_EXTS = ("flac", "wav", "ogg", "mp3")  # member suffixes read as audio (ours are flac; others for user shards)


class ShardError(DataError):
    """A shard that cannot be read as written (missing, truncated, broken member); the message names file and member."""


def read_index(path: str) -> dict:
    """The index.json of a shard directory (or the file itself, local or a URL), checked for format."""
    file = os.path.join(path, INDEX_NAME) if os.path.isdir(path) else path
    if not is_url(file) and not os.path.isfile(file):
        raise DataError(f"{path}: no {INDEX_NAME}; write shards with `ssast prepare` or pass .tar paths")
    try:
        index = _read_json(file)
    except OSError as e:
        raise DataError(f"{file}: cannot read the shard index ({e})") from None
    except ValueError as e:
        raise DataError(f"{file}: not valid JSON ({e}); re-run `ssast prepare`") from None
    if not isinstance(index, dict) or index.get("format") != INDEX_FORMAT or "shards" not in index:
        raise DataError(f"{file}: not an ssast shard index (format {INDEX_FORMAT!r}); re-run `ssast prepare`")
    return index


def resolve_shards(urls: list[str] | str) -> tuple[list[str], int | None]:
    """Expand a shard directory, an index.json, tar paths or brace patterns (local or URLs: see
    :mod:`ssast.data.remote`) into tar paths and a clip count if known."""
    paths, counts = shard_counts(urls)
    return paths, (None if None in counts else sum(counts))


def shard_counts(urls: list[str] | str) -> tuple[list[str], list[int | None]]:
    """The tar paths or URLs of ``urls`` and each shard's clip count (from the index or the sidecars, read through
    the shard's own scheme; None where unknown)."""
    items = [urls] if isinstance(urls, (str, Path)) else list(urls)
    paths: list[str] = []
    counts: list[int | None] = []
    for item in items:
        item = local_path(str(item))
        if (not is_url(item) and os.path.isdir(item)) or item.endswith(INDEX_NAME):
            index = read_index(item)
            if is_url(item):
                found = [beside(item, s) for s in index["shards"]]
            else:
                base = item if os.path.isdir(item) else os.path.dirname(item)
                found = [os.path.join(base, s) for s in index["shards"]]
            given = index.get("counts")
            paths += found
            counts += [int(c) for c in given] if isinstance(given, list) and len(given) == len(found) else \
                [None] * len(found)
        else:
            found = [local_path(p) for p in expand_urls(item)]  # webdataset's brace ("{000000..000009}") expansion
            paths += found
            counts += [None] * len(found)
    if not paths:
        raise DataError(f"no shards in {urls!r}; give a shard directory, .tar paths or a brace pattern")
    missing = [p for p in paths if not is_url(p) and not os.path.isfile(p)]
    if missing:
        raise DataError(f"{len(missing)} of {len(paths)} shard files not found, first: {', '.join(missing[:5])}")
    if None in counts:  # plain tar paths: count from our sidecars when every shard has one
        counts = [c if c is not None else _sidecar_count(p) for p, c in zip(paths, counts)]
    return paths, counts


def _sidecar_count(path: str) -> int | None:
    """The clip count in a shard's sidecar, None when it has none (or not one of ours)."""
    try:
        side = sidecar_url(path) if is_url(path) else sidecar_path(path)
        if not is_url(side) and not (path.endswith(".tar") and os.path.isfile(side)):
            return None
        # a shard without a sidecar is common and a missing file looks like any failed command: one try only
        return int(json.loads(read_url(side, retries=0))["count"] if is_url(side) else _read_json(side)["count"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def label_histogram(paths: list[str]) -> tuple[Counter, int]:
    """(clips per label, clips) over the given shards, from their sidecars; a DataError names a shard without one."""
    hist: Counter = Counter()
    clips = 0
    for p in paths:
        side = sidecar_url(p) if is_url(p) else sidecar_path(p)
        try:
            meta = _read_json(side)
            hist.update({k: int(v) for k, v in meta["labels"].items()})
            clips += int(meta["count"])
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            raise DataError(
                f"{p}: class-balanced sampling needs the label histogram in its sidecar {side} "
                "(written by `ssast prepare`); re-run prepare or set data.balanced_sampling=false"
            ) from None
    return hist, clips


def balance_over(sets: list["ShardDataset"]) -> None:
    """Class balance by weighting, counted over the union of ``sets`` (the authors' one weight file over their one
    training list): a clip weighs the sum over its labels of 1000 / (count + 0.01), counts from every set's sidecars,
    and is emitted r = weight / mean weight times on average (floor(r) copies plus one more with probability
    r - floor(r)), so one pass over the shards draws clips in proportion to their weights, as sampling with
    replacement would. Each set's ``expected_draws`` (its share of the union's draws) is what mixing sets weighs."""
    hist: Counter = Counter()
    for ds in sets:
        hist.update(ds.label_hist)
    clips = sum(ds.hist_clips for ds in sets)
    weights = {mid: 1000.0 / (n + 0.01) for mid, n in hist.items()}
    mean = sum(n * weights[mid] for mid, n in hist.items()) / max(clips, 1)
    label_weight = {mid: w / mean for mid, w in weights.items()}
    for ds in sets:
        ds.label_weight = label_weight
        ds.expected_draws = sum(n * label_weight[mid] for mid, n in ds.label_hist.items())


def _read_json(path: str) -> Any:
    if is_url(path):
        return json.loads(read_url(path))
    with open(path) as f:
        return json.load(f)


def _seed_int(*parts: int) -> int:
    """One integer seed from several (for random.Random, which takes no tuples)."""
    return int(np.random.SeedSequence([int(p) for p in parts]).generate_state(1, dtype=np.uint64)[0])


def _shard_samples(path: str) -> Iterator[dict]:
    """Grouped members of one tar ({"__key__", "flac", "json", ...}); a broken archive ends in an ``__error__`` dict."""
    last = None
    try:
        with open(path, "rb") as f:
            stream = [{"url": path, "stream": f}]
            for sample in tariterators.group_by_keys(tariterators.tar_file_expander(stream)):
                last = sample["__key__"]
                yield sample
    except Exception as e:  # truncated or not a tar: tarfile raises ReadError/EOFError/..., webdataset re-raises
        where = f"after member {last}" if last else "at its start"
        yield {"__key__": last or "", "__error__": f"corrupt: {path}: tar archive is truncated or corrupt {where} "
               f"({type(e).__name__}: {e.args[0] if e.args else ''}); re-run `ssast prepare` for this shard"}


class ShardDataset(torch.utils.data.IterableDataset):
    """Streams clips from WebDataset tar shards as item dicts ``{"wave", "labels", "key"}`` (the ClipDataset format).

    Splitting (no resample): the shard list (shuffled per epoch with ``(seed, epoch)`` when ``train``) is split
    across ranks (rank r takes shards r, r + world_size, ...) and then across the DataLoader workers of the rank the
    same way. Where a level has fewer shards than readers (fewer shards than ranks, or than a rank's workers), that
    level splits at clip level instead: every reader of the group streams the same shards and keeps clips
    r, r + n, ... of the stream, so every clip is still read once per epoch (at the cost of extra I/O).
    Ranks may get unequal counts (like an eval DistributedSampler); use ``resample`` for DDP training by steps.

    ``resample=True`` is an endless stream: each (rank, worker) draws shards with replacement from all shards with
    its own seed, as webdataset's ResampledShards does. ``train`` adds a shuffle buffer (webdataset's) of
    ``shuffle_buffer`` clips per worker and crops with ``audio.crop``; evaluation crops at the start.
    Per-clip randomness comes from ``(seed, epoch, clip, draw)`` so it does not depend on the worker layout.
    A broken member yields ``{"bad": True, "key": "<shard>:<key>", "reason": ...}`` (``strict`` raises instead:
    :class:`AudioError` for audio, :class:`ShardError` for JSON or the archive). Reading uses webdataset's
    ``tar_file_expander`` / ``group_by_keys`` on local files.
    """

    def __init__(
        self, urls: list[str] | str, *, labels: LabelSet | None, audio: AudioConfig, train: bool, seed: int = 0,
        rank: int = 0, world_size: int = 1, resample: bool = False, shuffle_buffer: int = 2000, strict: bool = False,
        balanced: bool = False, holdout: tuple[float, str] | None = None, num_clips: int = 0,
        retries: int = RETRIES, retry_wait: float = RETRY_WAIT_S,
    ) -> None:
        super().__init__()
        if not 0 <= rank < world_size:
            raise ValueError(f"rank must be in [0, world_size), got rank={rank}, world_size={world_size}")
        self.urls, counts = shard_counts(urls)
        self.counts = dict(zip(self.urls, counts))  # what a broken remote shard lost is its count minus what came
        self.num_clips = None if None in counts else sum(counts)
        if self.num_clips is None and num_clips:  # the config's count, for URLs without index or sidecars
            self.num_clips = num_clips
        self.retries, self.retry_wait = retries, retry_wait
        if holdout:  # whole shards are held out (the last ones), so validation never reads the training shards
            fraction, role = holdout
            if len(self.urls) < 2:
                raise DataError(f"{urls}: pretraining validation is held out as whole shards, and this source has "
                                f"one; give data.valid, or pack it into more shards (ssast prepare --shard-size)")
            n = max(1, round(fraction * len(self.urls)))
            self.urls = self.urls[-n:] if role == "only" else self.urls[:-n]
            self.num_clips = None
        self.labels, self.audio, self.train = labels, audio, train
        self.seed, self.rank, self.world_size = seed, rank, world_size
        self.resample, self.shuffle_buffer, self.strict = resample, shuffle_buffer, strict
        self.epoch = 0
        self.max_samples = max_samples(audio.target_length, *window_hop(audio.sample_rate))
        self.crop = audio.crop if train else "start"
        self.label_weight: dict[str, float] | None = None
        self.label_hist: Counter | None = None
        self.expected_draws: float | None = None  # clips one pass emits once balanced (see balance_over)
        if balanced:
            self.label_hist, clips = label_histogram(self.urls)
            self.hist_clips = clips
            balance_over([self])

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch: shard order, shuffle buffer and crops all depend on it."""
        self.epoch = int(epoch)

    def plan(self, worker: int = 0, num_workers: int = 1) -> tuple[list[str], int, int]:
        """(shards to stream, modulus, remainder) for one reader: keep stream clips n with n % modulus == remainder."""
        order = list(self.urls)
        if self.train:
            random.Random(_seed_int(self.seed, self.epoch)).shuffle(order)
        R, W = self.world_size, max(1, num_workers)
        if len(order) < R:  # too few shards even for the ranks: everyone reads everything, split by clip
            return order, R * W, self.rank + R * worker
        mine = order[self.rank :: R]
        if len(mine) < W:  # enough for ranks, not for this rank's workers: split the rank's stream by clip
            return mine, W, worker
        return mine[worker::W], 1, 0

    def _raw_stream(self, worker: int, num_workers: int) -> Iterator[tuple[str, dict, int]]:
        """(shard path, sample, draw) for this reader, before shuffling and decoding."""
        if self.resample:
            rng = random.Random(_seed_int(self.seed, self.epoch, self.rank, worker, 1))
            draw, idle = 0, 0
            while True:
                path = rng.choice(self.urls)
                got = False
                for sample in self._samples(path):
                    got = True
                    yield path, sample, draw
                draw += 1
                idle = 0 if got else idle + 1
                if idle > 10 * len(self.urls) + 10:  # only empty shards: an endless stream would hang silently
                    raise ShardError(f"no clips in any of {len(self.urls)} shards, e.g. {self.urls[0]}")
        shards, modulus, remainder = self.plan(worker, num_workers)
        n = 0
        for path in shards:
            for sample in self._samples(path):
                if n % modulus == remainder:
                    yield path, sample, 0
                n += 1

    def _samples(self, path: str) -> Iterator[dict]:
        """One shard's grouped members: a local file, or a URL read with retries (lost clips as error items)."""
        if is_url(path):
            return stream_samples(path, self.counts.get(path), self.retries, self.retry_wait)
        return _shard_samples(path)

    def __iter__(self) -> Iterator[dict]:
        info = torch.utils.data.get_worker_info()
        worker, num_workers = (info.id, info.num_workers) if info is not None else (0, 1)
        stream = self._raw_stream(worker, num_workers)
        if self.label_weight is not None and self.train:
            stream = self._balanced(stream, random.Random(_seed_int(self.seed, self.epoch, self.rank, worker, 3)))
        if self.train and self.shuffle_buffer > 1:
            rng = random.Random(_seed_int(self.seed, self.epoch, self.rank, worker, 2))
            initial = min(100, self.shuffle_buffer)
            stream = wds.filters.shuffle(self.shuffle_buffer, initial, rng=rng)(stream)
        for path, sample, draw in stream:
            yield self._decode(path, sample, draw)

    def _balanced(self, stream: Iterator[tuple[str, dict, int]], rng: random.Random) -> Iterator[tuple[str, dict, int]]:
        """Repeat each clip by its class-balance factor (see __init__); copies get their own crop draws."""
        for path, sample, draw in stream:
            try:
                mids = json.loads(sample.get("json", b"{}")).get("labels", [])
                if isinstance(mids, str):
                    mids = [m for m in mids.split(",") if m]
                factor = sum(self.label_weight.get(m, 0.0) for m in mids)
            except (ValueError, AttributeError):
                factor = 1.0  # a broken member passes once and is reported by _decode
            copies = int(factor) + (rng.random() < factor - int(factor))
            for j in range(copies):
                yield path, sample, draw * 1024 + j

    def _bad(self, path: str, key: str, error: str | AudioError) -> dict:
        """The bad item of a broken member; ``strict`` raises instead (the AudioError, or a ShardError for the rest)."""
        if self.strict:
            raise error if isinstance(error, AudioError) else ShardError(error)
        return bad_item(f"{os.path.basename(path)}:{key}", error)

    def _decode(self, path: str, sample: dict, draw: int) -> dict:
        """Item dict from one grouped tar sample: crop-decoded wave, multi-hot labels (or None), key."""
        key = sample["__key__"]
        if "__error__" in sample:
            return self._bad(path, key, sample["__error__"])
        meta: dict = {}
        if "json" in sample:
            try:
                meta = json.loads(sample["json"])
                if not isinstance(meta, dict):
                    raise ValueError("not a JSON object")
            except ValueError as e:
                msg = f"corrupt: {path}: member {key}.json is not valid JSON ({e}); re-run `ssast prepare`"
                return self._bad(path, key, msg)
        ext = next((e for e in AUDIO_EXTS if e in sample), None)
        if ext is None:
            msg = f"corrupt: {path}: sample {key} has no audio member ({', '.join(AUDIO_EXTS)})"
            return self._bad(path, key, msg)
        clip_id = zlib.crc32(f"{os.path.basename(path)}:{key}".encode())
        rng = np.random.default_rng([self.seed, self.epoch, clip_id, draw])
        try:
            wave = load_audio(
                sample[ext], sample_rate=self.audio.sample_rate, max_samples=self.max_samples,
                crop=self.crop, rng=rng, name=f"{path}:{key}.{ext}",
            )
        except AudioError as e:
            return self._bad(path, key, e)
        return {"wave": wave, "labels": self._encode_labels(path, key, meta.get("labels", [])), "key": key}

    def _encode_labels(self, path: str, key: str, mids: Any) -> np.ndarray | None:
        if self.labels is None:
            return None
        if isinstance(mids, str):  # lenient: the SSAST list's "mid1,mid2" form
            mids = [m for m in mids.split(",") if m]
        try:
            return self.labels.encode(list(mids))
        except (DataError, KeyError, ValueError) as e:
            # A label CSV that does not match the shards is a configuration error, never a skippable clip.
            raise DataError(f"{path}: member {key}.json: {e}; use the label CSV the shards were written with") from None
