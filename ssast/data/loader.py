"""From the config's data sources to batches: JSON lists, audio folders and shards, mixed by weight, with skip counts.

``build_loader(cfg, "train")`` returns a :class:`ClipLoader`, an iterable of :func:`~ssast.data.dataset.collate`
batches with ``set_epoch(epoch, start_batch)`` for exact resume, ``len()`` in batches (map-style sources), and a running
count of skipped clips (``skip_summary()``).

Sources: a ``.json``/``.jsonl`` clip list, a folder of audio files, or WebDataset shards (a folder holding
``index.json``, a ``.tar`` path or a brace pattern). When every source is map-style (lists, folders) the sources are
concatenated and drawn by :class:`ResumableSampler` (weighted when mixing sources or balancing classes; an epoch has as
many draws as there are clips). When any source is shards, each source becomes a stream and :class:`WeightedInterleave`
picks the next clip's source at random by weight (both in :mod:`ssast.data.streams`); pretraining streams are endless.
"""
from __future__ import annotations

import collections
import copy
import functools
import math
import os
import warnings
import zlib
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np
import torch
from torch.utils.data import ConcatDataset, DataLoader

from ssast.audio.io import AudioError
from ssast.config import Config
from ssast.environment import EnvironmentMismatch
from ssast.data.dataset import ClipDataset, collate, reason_kind, summarize_skips
from ssast.data.manifest import (
    DataError,
    LabelSet,
    check_files,
    list_audio_folder,
    read_json_list,
    read_label_csv,
    report_missing,
)
from ssast.data.sampler import ResumableSampler, class_balanced_weights
from ssast.data.remote import is_url, local_path
from ssast.data.streams import MapStream, WeightedInterleave

# Endless streams resumed at batch b of an epoch restart from a fresh stream seeded by (epoch, b).
_RESUME_STRIDE = 1_000_003


def source_kind(source: str) -> str:
    """'list' (JSON / JSON Lines), 'folder' (audio files) or 'shards' (WebDataset); DataError otherwise."""
    if is_url(source) and not source.startswith("file:"):
        return "shards"  # http(s):// and pipe: name shards (or their index.json); file: is a local path
    source = local_path(source)
    p = Path(source)
    low = source.lower()
    if low.endswith((".json", ".jsonl")):
        return "list"
    if low.endswith(".tar") or ("{" in source and ".." in source):
        return "shards"
    if p.is_dir():
        return "shards" if (p / "index.json").is_file() else "folder"
    if not p.exists():
        raise DataError(f"data source not found: {source}")
    raise DataError(
        f"data source {source}: expected a .json/.jsonl clip list, a folder of audio files, "
        "or WebDataset shards (a folder with index.json, a .tar file or a {000..009} pattern)"
    )


def resolve_num_workers(requested: int, world_size: int = 1) -> int:
    """Worker processes per rank: the request, or for -1 the CPUs this rank can spare, one left for the main process.

    Capped at 8: one worker decodes about 200 ten-second 16 kHz FLAC clips/s (benchmarks/bench_decode.py), so 8 feed
    even small-model GPU steps; sources at 44.1 kHz decode 4x slower (resampling) and are better packed as shards.
    """
    if requested >= 0:
        return requested
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cpus = os.cpu_count() or 1
    return max(0, min(8, cpus // max(1, world_size) - 1))


def _worker_init(_: int) -> None:
    # One thread per worker: the workers already run in parallel, extra threads only contend for cores.
    torch.set_num_threads(1)


def _clean_error(e: Exception) -> Exception:
    """A worker's error arrives wrapped in a traceback text: keep only its one-line message, and its type."""
    text = str(e)
    if "Traceback" not in text:
        return e
    last = [ln for ln in text.strip().splitlines() if ln.strip()][-1]
    text = last.split(f"{type(e).__name__}: ", 1)[-1].strip()
    if isinstance(e, AudioError):
        return AudioError(text, kind=reason_kind(text), path=getattr(e, "path", ""))
    try:
        return type(e)(text)
    except Exception:  # an error type that needs other arguments: keep it as it came
        return e


def _short_reason(key: str, reason: str) -> str:
    """The reason without the clip name it repeats ("corrupt: a.wav: cannot ..." -> "corrupt: cannot ...")."""
    kind = reason_kind(reason)
    head = f"{kind}: {key}: "
    return f"{kind}: {reason[len(head):]}" if reason.startswith(head) else reason


# An endless stream that has produced only bad clips after this many gives up instead of looping forever.
ENDLESS_GIVE_UP = 1000


class ClipLoader:
    """Batches of one split: iterate for batches; ``set_epoch`` before each epoch; skipped clips are counted."""

    def __init__(
        self,
        loader: DataLoader,
        *,
        sampler: ResumableSampler | None,
        datasets: Sequence[object],
        labels: LabelSet | None,
        batch_size: int,
        endless: bool,
        name: str = "data",
        training: bool = False,
        world_size: int = 1,
    ) -> None:
        self.loader = loader
        self.world_size = world_size
        self.training = training
        self.sampler = sampler
        self.datasets = list(datasets)
        self.labels = labels
        self.batch_size = batch_size
        self.endless = endless
        self.epoch = 0
        self.start_batch = 0
        self.position = 0  # batches drawn in this epoch, empty ones included (save this to resume)
        self.seen = 0  # clips read, skipped ones included
        self.skipped: collections.Counter[str] = collections.Counter()
        self.skip_examples: list[tuple[str, str]] = []
        self.usable_seen = False
        self.name = name

    @property
    def num_batches(self) -> int | None:
        """Batches per full epoch on this rank; None for streams (shards)."""
        if self.sampler is None:
            return None
        return math.ceil(self.sampler.per_rank / self.batch_size)

    def estimated_batches(self) -> int | None:
        """Batches per epoch on this rank for a finite stream, from the sources' clip counts (None if unknown)."""
        clips = getattr(self.datasets[0], "num_clips", None) if len(self.datasets) == 1 else None
        if not clips:
            return None
        return max(1, math.ceil(clips / self.world_size / self.batch_size))

    def __len__(self) -> int:
        n = self.num_batches
        if n is None:
            raise TypeError("this loader streams shards and has no length; count steps instead")
        return n

    def set_epoch(self, epoch: int, start_batch: int = 0) -> None:
        """Select the epoch and skip its first ``start_batch`` batches (what a resumed run already consumed)."""
        self.epoch, self.start_batch = int(epoch), int(start_batch)
        ds_epoch = self.epoch
        if self.sampler is not None:
            self.sampler.set_epoch(epoch, start_batch, self.batch_size)
        elif self.endless and start_batch:
            ds_epoch = self.epoch * _RESUME_STRIDE + self.start_batch  # fresh stream, no replay
        for ds in self.datasets:
            if hasattr(ds, "set_epoch"):
                ds.set_epoch(ds_epoch)

    def _record(self, batch: dict) -> None:
        self.seen += len(batch["keys"]) + len(batch["skipped"])
        for key, reason in batch["skipped"]:
            self.skipped[reason_kind(reason)] += 1
            if len(self.skip_examples) < 5:
                self.skip_examples.append((key, reason))

    def __iter__(self) -> Iterator[dict]:
        self.position = self.start_batch
        # Finite streams have no sampler to skip with: drop the consumed batches (exact, costs their decoding).
        discard = self.start_batch if (self.sampler is None and not self.endless) else 0
        full_pass = self.start_batch == 0 and not self.endless and self.training  # evaluation reports, not stops
        usable = 0
        it = iter(self.loader)
        try:
            for batch in it:
                if discard:
                    discard -= 1
                    continue
                self.position += 1
                self._record(batch)
                if batch["wave"].shape[0] == 0:
                    # every clip of this batch was bad; a stream of nothing but bad clips would never end
                    if self.endless and not self.usable_seen and self.seen >= ENDLESS_GIVE_UP:
                        raise DataError(self._nothing_usable())
                    continue
                usable += batch["wave"].shape[0]
                self.usable_seen = True
                yield batch
            if full_pass and not usable:
                raise DataError(self._nothing_usable())
        except (AudioError, DataError, EnvironmentMismatch) as e:  # strict-mode bad clips, broken shards, labels; no resampler
            clean = _clean_error(e)
            if clean is e:
                raise
            e.__traceback__ = None  # the traceback holds the DataLoader iterator and its workers alive
            raise clean from None
        finally:
            del it  # stop the worker processes now, not when the traceback is garbage-collected

    def preflight(self) -> None:
        """Before the first step: a split of clip lists or folders with no clip, or (for evaluation) none whose file
        opens as audio, stops here in one line with the counts and reasons, not after an epoch of training. Reads
        headers only, and only until the first good clip."""
        clips = [c for ds in self.datasets for c in getattr(ds, "clips", ())]
        if self.sampler is None:
            return  # shard streams: checked as they are read (their index says how many clips they hold)
        if not clips:
            raise DataError(f"{self.name}: the sources hold no clips (an empty list or folder)")
        if self.training:
            return  # the training pass reports its own bad clips, and stops on none
        from ssast.audio.io import audio_info

        reasons: collections.Counter[str] = collections.Counter()
        examples = []
        for c in clips:
            try:
                audio_info(c.path)
                return
            except AudioError as e:
                reasons[e.kind] += 1
                examples.append(f"{c.key or c.path} ({_short_reason(c.key or c.path, str(e))})")
        raise DataError(f"{self.name}: no usable clip; " + summarize_skips(len(clips), dict(reasons), examples))

    def reset_counts(self) -> None:
        """Forget the skip counts (before an evaluation pass, so its summary covers that pass alone)."""
        self.seen = 0
        self.skipped.clear()
        self.skip_examples.clear()

    def _nothing_usable(self) -> str:
        if not self.seen:
            return f"{self.name}: the sources hold no clips"
        return f"{self.name}: no usable clip; {self.skip_summary()}"

    def skip_summary(self) -> str:
        """One line: how many clips were skipped, by reason, and the first examples."""
        return summarize_skips(self.seen, dict(self.skipped),
                               [f"{key} ({_short_reason(key, reason)})" for key, reason in self.skip_examples])


def holdout_fraction(cfg: Config) -> float:
    """The share of the training clips held out as pretraining validation: ``data.holdout`` when a pretraining run
    needs validation (plateau schedule or ``train.eval_every``) and has no ``data.valid``; else 0."""
    needs = cfg.optim.schedule == "plateau" or cfg.train.eval_every > 0
    return cfg.data.holdout if cfg.task == "pretrain" and needs and not cfg.data.valid else 0.0


def held_out_paths(paths: Sequence[str], fraction: float) -> set[str]:
    """The clips held out of one source: the ``fraction`` (at least one) with the smallest fixed hash of their path,
    so every run, rank and worker agrees without storing a list."""
    if len(paths) < 2:
        raise DataError(f"a source of {len(paths)} clip cannot give pretraining validation clips and still train; "
                        "give data.valid")
    count = max(1, round(fraction * len(paths)))
    return set(sorted(paths, key=lambda p: (zlib.crc32(p.encode()), p))[:count])


def _map_dataset(cfg: Config, source: str, kind: str, labels: LabelSet | None, train: bool, seed: int,
                 holdout: tuple[float, str] | None = None) -> ClipDataset:
    if kind == "list":
        clips = read_json_list(source, labels)
        missing = check_files(clips, source)
        if missing:
            report_missing(missing, source, len(clips), allow_missing=getattr(cfg.data, "allow_missing", False))
            gone = set(missing)
            clips = [c for c in clips if c.path not in gone]
        clip_labels = labels
    else:
        if labels is not None and cfg.task == "finetune":  # caught here, not as a TypeError at the first loss
            raise DataError(
                f"data source {source}: a folder of audio has no labels, but fine-tuning needs them; give a labelled "
                "JSON clip list ({\"wav\": ..., \"labels\": ...}) or shards packed from one (ssast prepare)"
            )
        clips = list_audio_folder(source)
        clip_labels = None  # a folder has no labels
    if holdout:
        fraction, role = holdout
        held = held_out_paths([c.path for c in clips], fraction)
        clips = [c for c in clips if (c.path in held) == (role == "only")]
    mixup = cfg.augment.mixup if cfg.augment.mixup_partner == "dataset" and cfg.augment.mixup_domain == "wave" else 0
    return ClipDataset(
        clips,
        labels=clip_labels,
        audio=cfg.audio,
        train=train,
        seed=seed,
        strict=cfg.data.strict,
        mixup_prob=mixup if train else 0.0,
        mixup_alpha=cfg.augment.mixup_alpha,
    )


def _map_weights(cfg: Config, datasets: Sequence[ClipDataset], train: bool) -> np.ndarray | None:
    """Per-item sampling weights for class balance and/or source mixing; None for plain shuffling.

    Class balance counts labels over the UNION of the training lists, as the authors' one weight file over their one
    list does (AudioSet-2M = the balanced and unbalanced lists together): per-list counts would give each list a total
    weight of about the number of classes, i.e. the small balanced list half of all draws."""
    if not train:
        return None
    balanced = cfg.data.balanced_sampling
    mixing = len(datasets) > 1 and bool(cfg.data.train_weights)
    if not balanced and not mixing:
        return None
    sizes = [len(ds) for ds in datasets]
    if balanced:
        if any(ds.labels is None for ds in datasets):
            raise DataError(
                "data.balanced_sampling needs labelled clip lists and data.label_csv; "
                "folders have no labels: set data.balanced_sampling=false"
            )
        weights = class_balanced_weights(np.concatenate([ds.label_matrix() for ds in datasets]))
    else:
        weights = np.ones(sum(sizes))
    parts = np.split(weights, np.cumsum(sizes)[:-1])
    if mixing:
        shares = np.asarray(cfg.data.train_weights, dtype=np.float64)
        shares = shares / shares.sum()
        # Scale each source so its total weight is its share: source s is drawn with probability share_s.
        parts = [p * (s / p.sum()) if p.sum() > 0 else p for p, s in zip(parts, shares)]
    return np.concatenate(parts)


def _stream_sizes(datasets: Sequence) -> list[float]:
    """Default mixing weights: proportional to each source's clip count, i.e. what concatenating them would give
    (the paper's AudioSet + LibriSpeech); class-balanced shard sets weigh their expected draws (their share of the
    union's total class weight). Shard sets without a known count (no index) weigh as much as the mean."""
    sizes = [len(ds) if isinstance(ds, ClipDataset) else (getattr(ds, "expected_draws", None)
                                                         or getattr(ds, "num_clips", None)) for ds in datasets]
    known = [n for n in sizes if n]
    fill = sum(known) / len(known) if known else 1.0
    return [float(n) if n else fill for n in sizes]


def build_loader(
    cfg: Config,
    split: str,
    *,
    labels: LabelSet | None = None,
    rank: int = 0,
    world_size: int = 1,
    train: bool | None = None,
) -> ClipLoader:
    """The batches of ``cfg.data.<split>`` for one DDP rank; ``train`` (default: split == "train") turns on
    shuffling, random crops, dataset mixup, weighting and, for pretraining, endless shard streams."""
    if split not in ("train", "valid", "test"):
        raise ValueError(f"split must be train, valid or test, got {split!r}")
    sources = list(getattr(cfg.data, split))
    held = holdout_fraction(cfg)
    role = None  # pretraining validation held out of the training sources: "exclude" from train, "only" for valid
    if held and split == "train":
        role = "exclude"
    elif held and split == "valid" and not sources:
        sources, role = list(cfg.data.train), "only"
    if not sources:
        raise DataError(f"data.{split} is empty: give a JSON clip list, an audio folder or a shard directory")
    sources = [local_path(s) for s in sources]  # file:PATH is PATH
    train = split == "train" if train is None else train
    if labels is None and cfg.data.label_csv:
        labels = read_label_csv(cfg.data.label_csv)
    kinds = [source_kind(s) for s in sources]
    if train and cfg.augment.mixup > 0 and cfg.augment.mixup_partner == "dataset" and "shards" in kinds:
        # a shard stream has no random access to draw a partner from: it would train with no mixup at all
        shard_source = sources[kinds.index("shards")]
        raise DataError(f"augment.mixup_partner=dataset needs clip lists or folders, not shards ({shard_source}); "
                        "use augment.mixup_partner=batch with shards")
    seed = cfg.train.seed
    endless = train and cfg.task == "pretrain"
    batch_size = cfg.data.batch_size if train else (cfg.data.eval_batch_size or cfg.data.batch_size)
    datasets: list = []
    for k, (src, kind) in enumerate(zip(sources, kinds)):
        src_seed = seed + 7919 * k  # distinct per source so two lists do not share crop draws
        if kind == "shards":
            from ssast.data.shards import ShardDataset  # lazy: only shard users need webdataset

            datasets.append(
                ShardDataset(
                    src,
                    labels=labels,
                    audio=cfg.audio,
                    train=train,
                    seed=src_seed,
                    rank=rank,
                    world_size=world_size,
                    resample=endless,
                    shuffle_buffer=cfg.data.shuffle_buffer,
                    strict=cfg.data.strict,
                    balanced=train and cfg.data.balanced_sampling,
                    holdout=(held, role) if role else None,
                    num_clips=cfg.data.train_clips if split == "train" else 0,
                )
            )
        else:
            datasets.append(_map_dataset(cfg, src, kind, labels, train, src_seed, (held, role) if role else None))

    sampler = None
    if "shards" not in kinds:
        for ds in datasets:  # mixup partners over the union of the lists, as over the authors' one list
            ds.share_partners(datasets)
        dataset = datasets[0] if len(datasets) == 1 else ConcatDataset(datasets)
        sampler = ResumableSampler(
            len(dataset),
            shuffle=train,
            seed=seed,
            rank=rank,
            world_size=world_size,
            pad=train,
            weights=_map_weights(cfg, datasets, train),
            batch_size=batch_size,
        )
    else:
        if train and cfg.data.balanced_sampling and "shards" in kinds and any(k != "shards" for k in kinds):
            raise DataError(
                "data.balanced_sampling with a mix of shards and clip lists: pack every source as shards "
                "(`ssast prepare`) or train from the lists alone"
            )
        streams = [
            ds if kind == "shards" else MapStream(ds, train=train, seed=seed, rank=rank, world_size=world_size,
                                                  endless=endless)
            for ds, kind in zip(datasets, kinds)
        ]
        balanced = [ds for ds in datasets if getattr(ds, "label_weight", None) is not None]
        if len(balanced) > 1:  # class counts over the union of the training lists, not per list
            from ssast.data.shards import balance_over

            balance_over(balanced)
        weights = cfg.data.train_weights if (train and cfg.data.train_weights) else _stream_sizes(datasets)
        dataset = streams[0] if len(streams) == 1 else WeightedInterleave(
            streams, weights, seed=seed, rank=rank, endless=endless
        )
        datasets = [dataset]

    workers = resolve_num_workers(cfg.data.num_workers, world_size)
    loader = DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=sampler,
        num_workers=workers,
        collate_fn=functools.partial(collate, sample_rate=cfg.audio.sample_rate),
        pin_memory=torch.cuda.is_available(),
        persistent_workers=False,  # workers must see each epoch's set_epoch
        worker_init_fn=_worker_init if workers else None,
        # its own generator: creating an iterator must not draw from the global RNG the training step uses,
        # or a resumed run (which creates its iterator mid-epoch) would see different augmentation draws
        generator=torch.Generator().manual_seed(cfg.train.seed),
    )
    return ClipLoader(
        loader,
        sampler=sampler,
        datasets=datasets,
        labels=labels,
        batch_size=batch_size,
        endless=endless and sampler is None,
        name=f"data.{split}",
        training=train,
        world_size=world_size,
    )


def compute_dataset_stats(cfg: Config, split: str = "train") -> tuple[float, float]:
    """Mean and std of the split's fbank values, without augmentation (for audio.norm_mean / norm_std)."""
    from ssast.audio.fbank import FeatureError
    from ssast.audio.stats import fbank_stats  # lazy: features are not needed to build loaders

    cfg = copy.deepcopy(cfg)
    cfg.augment.mixup = 0.0
    cfg.data.label_csv = ""  # statistics need audio only (so unlabelled folders are fine for any task)
    loader = build_loader(cfg, split, train=False)
    loader.set_epoch(0)
    try:
        mean, std = fbank_stats(((b["wave"], b["num_frames"]) for b in loader), cfg.audio)
    except FeatureError:  # no usable frame at all: say which clips were tried and why they were left out
        sources = ", ".join(getattr(cfg.data, split))
        rest = "the others are shorter than one 25 ms window" if loader.seen > sum(loader.skipped.values()) else (
            "fix or remove these clips")
        raise DataError(
            f"data.{split} ({sources}): no usable audio to compute statistics from: {loader.skip_summary()}; {rest}"
        ) from None
    if sum(loader.skipped.values()):
        warnings.warn(loader.skip_summary(), stacklevel=2)
    return float(mean), float(std)
