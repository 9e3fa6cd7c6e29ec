"""Map-style clip dataset and the batch collate: the item and batch format every data source shares.

Item (a dict), also yielded by the shard reader:
    ``{"wave": float32 (samples,), "labels": float32 (C,) or None, "key": str}``
A clip that cannot be used becomes, outside strict mode (built by :func:`bad_item` for every source),
    ``{"bad": True, "key": str, "reason": str}``
where ``reason`` starts with a short kind word and a colon (``"corrupt: a.wav: cannot decode ..."``); the loader counts
skipped clips by that word. Batch (from :func:`collate`):
    ``{"wave": (B, S) float32, "num_frames": (B,) long, "labels": (B, C) float32 or None, "keys": [...],
    "skipped": [(key, reason), ...]}``
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
from torch.utils.data import Dataset

from ssast.audio.fbank import frames_for, max_samples, window_hop
from ssast.audio.io import AudioError, load_audio, require_complete
from ssast.config import AudioConfig
from ssast.data.manifest import Clip, LabelSet



def bad_item(key: str, error: Exception | str) -> dict:
    """The item that stands in for a clip that could not be used (non-strict mode)."""
    if isinstance(error, AudioError):
        reason = str(error)
    elif isinstance(error, Exception):
        reason = f"corrupt: {key}: {error}"
    else:
        reason = error
    return {"bad": True, "key": key, "reason": reason}


def reason_kind(reason: str) -> str:
    """The short category of a skip reason (its first word before ':'), 'other' when it has none."""
    head = reason.split(":", 1)[0].strip()
    return head if head and " " not in head and len(head) <= 20 and head != reason else "other"


def summarize_skips(seen: int, counts: dict[str, int], examples: list[str]) -> str:
    """One line: how many of ``seen`` clips were skipped, by reason, and the first examples."""
    total = sum(counts.values())
    text = f"skipped {total} of {seen} clips"
    if total:
        kinds = ", ".join(f"{n} {k}" for k, n in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])))
        text += f": {kinds}; first: " + "; ".join(examples[:3])
    return text


class ClipDataset(Dataset):
    """Clips decoded on demand, cropped to the model's input length, with optional dataset-level wave mixup.

    All randomness of item ``i`` comes from ``np.random.default_rng((seed, epoch, i))``: an item is a pure function of
    (seed, epoch, index), so worker count and resuming mid-epoch do not change the data.
    """

    def __init__(
        self,
        clips: Sequence[Clip],
        *,
        labels: LabelSet | None,
        audio: AudioConfig,
        train: bool,
        seed: int = 0,
        strict: bool = False,
        mixup_prob: float = 0.0,
        mixup_alpha: float = 10.0,
    ) -> None:
        self.clips = list(clips)
        self.labels = labels
        self.audio = audio
        self.train = train
        self.seed = int(seed)
        self.strict = strict
        self.mixup_prob = float(mixup_prob) if train else 0.0
        self.mixup_alpha = float(mixup_alpha)
        self.epoch = 0
        self.max_samples = max_samples(audio.target_length, *window_hop(audio.sample_rate))
        self.crop = audio.crop if train else "start"
        self.partners: list[ClipDataset] = [self]  # where mixup partners come from (see share_partners)

    def share_partners(self, pool: Sequence["ClipDataset"]) -> None:
        """Draw mixup partners uniformly over the clips of every dataset in ``pool`` (the union of the training
        lists, as the authors draw over their one list), not over this list alone."""
        self.partners = list(pool)

    def __len__(self) -> int:
        return len(self.clips)

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch whose crops and mixup draws items use."""
        self.epoch = int(epoch)

    def label_matrix(self) -> np.ndarray:
        """(N, C) multi-hot labels of every clip, without decoding audio (for class-balanced sampling)."""
        if self.labels is None:
            raise ValueError("this dataset has no label set")
        return np.stack([self.labels.encode(c.labels) for c in self.clips]) if self.clips else np.zeros(
            (0, len(self.labels)), np.float32
        )

    def _load(self, index: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray | None]:
        clip = self.clips[index]
        wave = load_audio(
            clip.path,
            sample_rate=self.audio.sample_rate,
            max_samples=self.max_samples,
            crop=self.crop,
            rng=rng,
            name=clip.key or clip.path,
        )
        y = self.labels.encode(clip.labels) if self.labels is not None else None
        return wave, y

    def __getitem__(self, index: int) -> dict:
        rng = np.random.default_rng((self.seed, self.epoch, int(index)))
        key = self.clips[index].key or self.clips[index].path
        try:
            wave, y = self._load(index, rng)
            if self.strict:  # strict mode refuses a WAV cut short; the default mode trains on the part that is there
                require_complete(self.clips[index].path, key)
        except AudioError as e:
            if self.strict:
                path = self.clips[index].path
                if key != path:  # a folder's clip is keyed by its bare name: the error names its path
                    raise AudioError(str(e).replace(key, path, 1), kind=e.kind, path=path) from None
                raise
            return bad_item(key, e)
        if self.mixup_prob > 0 and rng.random() < self.mixup_prob:
            wave, y = self._mix(wave, y, rng)
        return {"wave": wave, "labels": y, "key": key}

    def _mix(self, wave: np.ndarray, y: np.ndarray | None, rng: np.random.Generator):
        """Mix with a partner drawn uniformly over the training clips (the authors' dataset-level mixup), labels
        mixed alike. As the authors do, the partner is zero-padded or cut to this clip's length."""
        partner = int(rng.integers(sum(len(ds) for ds in self.partners)))
        source = self.partners[0]
        for source in self.partners:  # the list the partner's index falls in
            if partner < len(source):
                break
            partner -= len(source)
        lam = float(rng.beta(self.mixup_alpha, self.mixup_alpha))
        try:
            other, y2 = source._load(partner, rng)
        except AudioError:
            if self.strict:
                raise
            return wave, y  # a bad partner only cancels the mix; the clip itself is fine
        mixed = lam * wave
        n = min(len(wave), len(other))
        mixed[:n] += (1.0 - lam) * other[:n]
        mixed -= mixed.mean(dtype=np.float64).astype(np.float32)
        if y is not None and y2 is not None:
            y = (lam * y + (1.0 - lam) * y2).astype(np.float32)
        return mixed, y


def collate(items: Sequence[dict], sample_rate: int = 16000) -> dict:
    """Batch items: drop bad ones (listed in "skipped"), zero-pad waves to the longest, count real frames.

    ``labels`` is None when any item has none (e.g. labeled and unlabeled sources mixed for pretraining).
    A batch of only bad clips has B = 0.
    """
    good = [it for it in items if not it.get("bad")]
    skipped = [(it["key"], it["reason"]) for it in items if it.get("bad")]
    lengths = [len(it["wave"]) for it in good]
    S = max(lengths, default=0)
    wave = torch.zeros(len(good), S, dtype=torch.float32)
    for i, it in enumerate(good):
        wave[i, : lengths[i]] = torch.from_numpy(np.asarray(it["wave"], dtype=np.float32))
    num_frames = torch.tensor([frames_for(n, *window_hop(sample_rate)) for n in lengths], dtype=torch.long)
    labels = None
    if good and all(it.get("labels") is not None for it in good):
        labels = torch.from_numpy(np.stack([np.asarray(it["labels"], dtype=np.float32) for it in good]))
    return {
        "wave": wave,
        "num_frames": num_frames,
        "labels": labels,
        "keys": [it["key"] for it in good],
        "skipped": skipped,
    }
