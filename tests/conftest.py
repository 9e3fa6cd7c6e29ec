"""Shared test fixtures: synthetic audio files and a tiny labelled corpus (JSON list + label CSV)."""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf


def synth(seconds: float, sr: int = 16000, kind: str = "tone", freq: float = 440.0, amp: float = 0.5,
          seed: int = 0) -> np.ndarray:
    """A mono float32 test signal: a pure tone, white noise, or a speech-like harmonic sound with vibrato."""
    n = int(round(seconds * sr))
    t = np.arange(n) / sr
    rng = np.random.default_rng(seed)
    if kind == "tone":
        x = np.sin(2 * np.pi * freq * t)
    elif kind == "noise":
        x = rng.uniform(-1, 1, n)
    elif kind == "speechlike":
        f0 = 120 + 15 * np.sin(2 * np.pi * 5 * t)  # vibrato around 120 Hz
        phase = 2 * np.pi * np.cumsum(f0) / sr
        x = sum(np.sin(k * phase) / k for k in range(1, 12))
        x = x * (0.6 + 0.4 * np.sin(2 * np.pi * 3 * t) ** 2)  # syllable-rate envelope
        x = x / (np.abs(x).max() + 1e-9)
    else:
        raise ValueError(f"unknown kind {kind!r}")
    return (amp * x).astype(np.float32)


def make_wav(path: str | Path, seconds: float, sr: int = 16000, channels: int = 1, kind: str = "tone",
             freq: float = 440.0, amp: float = 0.5, seed: int = 0, subtype: str | None = None) -> np.ndarray:
    """Write a synthetic clip (format from the suffix: wav/flac/ogg/mp3); returns the (samples, channels) data."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    cols = [synth(seconds, sr, kind, freq * (1 + 0.5 * c), amp, seed + c) for c in range(channels)]
    data = np.stack(cols, axis=1)
    sf.write(str(path), data, sr, subtype=subtype)
    return data


@dataclass
class TinyCorpus:
    """Paths and ground truth of the tiny corpus written by the ``tiny_corpus`` fixture."""

    root: Path
    json_list: Path
    label_csv: Path
    mids: list[str]
    wavs: list[Path] = field(default_factory=list)
    labels: list[list[str]] = field(default_factory=list)


def write_corpus(root: Path, n: int = 6, seconds: float = 0.5) -> TinyCorpus:
    """Write ``n`` labelled tone/noise clips, a 3-class AudioSet-style label CSV and a SSAST JSON list (relative paths)."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    mids = ["/m/aaa", "/m/bbb", "/m/ccc"]
    csv_path = root / "class_labels_indices.csv"
    csv_path.write_text(
        "index,mid,display_name\n" + "".join(f'{i},{m},"Class {i}, test"\n' for i, m in enumerate(mids))
    )
    corpus = TinyCorpus(root=root, json_list=root / "train.json", label_csv=csv_path, mids=mids)
    entries = []
    for i in range(n):
        rel = Path("audio") / f"clip{i:02d}.wav"
        kind = "noise" if i % 3 == 2 else "tone"
        make_wav(root / rel, seconds, kind=kind, freq=200 + 100 * i, seed=i)
        labs = [mids[i % 3]] + ([mids[(i + 1) % 3]] if i % 2 else [])
        corpus.wavs.append(root / rel)
        corpus.labels.append(labs)
        entries.append({"wav": rel.as_posix(), "labels": ",".join(labs)})
    corpus.json_list.write_text(json.dumps({"data": entries}))
    return corpus


@pytest.fixture
def tiny_corpus(tmp_path: Path) -> TinyCorpus:
    """Six 0.5 s labelled clips under tmp_path/corpus with train.json and class_labels_indices.csv."""
    return write_corpus(tmp_path / "corpus")
