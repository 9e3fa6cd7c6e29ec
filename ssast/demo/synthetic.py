"""Synthetic labelled audio tasks that the demo, the tests and the label-efficiency study make themselves.

Three tasks with different structure, so that a recipe is not tuned to one kind of sound:

- ``events``: six sound-event classes (chirps, tones, clicks, noise bursts) at random times, pitches and levels;
- ``keywords``: ten speech-like "words" of two or three syllables (formant-filtered glottal pulses with fricative,
  plosive or nasal onsets), spoken by random voices (pitch, vocal-tract length, rate); two pairs of words differ
  only in syllable order, so the task needs time structure, as keyword spotting does;
- ``instruments``: eight instrument-like timbres (plucked, bowed with vibrato, breathy, odd-harmonic, bell
  partials, brass attack, organ, marimba), one to three notes at random pitches.

Every corpus has an unlabeled pool (for pretraining), a labelled train split (the first ``k`` clips of each class
form the k-per-class subsets) and a test split, written as wav files with SSAST JSON lists and a label CSV.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import soundfile as sf

SR = 16000


def _finish(x: np.ndarray, env: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Peak-normalise, apply the envelope and a random level, add faint background noise."""
    x = x / (np.abs(x).max() + 1e-9) * env * rng.uniform(0.3, 0.9)
    x += rng.standard_normal(len(x)) * rng.uniform(0.002, 0.02)
    return x.astype(np.float32)


# -- events ---------------------------------------------------------------------------------------------------------
EVENT_CLASSES = [
    ("rising", "rising chirp"),
    ("falling", "falling chirp"),
    ("harmonic", "harmonic tone"),
    ("tremolo", "amplitude-modulated tone"),
    ("pulses", "click train"),
    ("band_noise", "band-limited noise burst"),
]


def synth_event(kind: str, seconds: float, rng: np.random.Generator) -> np.ndarray:
    """One clip: an event of ``kind`` at a random time, pitch and level over faint background noise."""
    n = int(seconds * SR)
    t = np.arange(n) / SR
    dur = rng.uniform(0.4, 0.8) * seconds
    start = rng.uniform(0, seconds - dur)
    env = ((t >= start) & (t < start + dur)).astype(np.float64)
    local = np.clip(t - start, 0, dur)
    f0 = rng.uniform(200, 1200)
    if kind == "rising":
        f1 = f0 * rng.uniform(2.5, 4.0)
        x = np.sin(2 * np.pi * (f0 * local + (f1 - f0) * local**2 / (2 * dur)))
    elif kind == "falling":
        f1 = f0 * rng.uniform(2.5, 4.0)
        x = np.sin(2 * np.pi * (f1 * local - (f1 - f0) * local**2 / (2 * dur)))
    elif kind == "harmonic":
        x = sum(np.sin(2 * np.pi * f0 * h * t) / h for h in range(1, 6))
    elif kind == "tremolo":
        x = np.sin(2 * np.pi * f0 * 1.5 * t) * (0.5 + 0.5 * np.sin(2 * np.pi * rng.uniform(6, 12) * t))
    elif kind == "pulses":
        period = int(SR / rng.uniform(8, 20))
        x = np.zeros(n)
        x[::period] = 1.0
        x = np.convolve(x, np.hanning(64), mode="same")
    elif kind == "band_noise":
        spec = np.fft.rfft(rng.standard_normal(n))
        freqs = np.fft.rfftfreq(n, 1 / SR)
        lo = rng.uniform(1500, 5000)
        spec[(freqs < lo) | (freqs > lo * 1.5)] = 0
        x = np.fft.irfft(spec, n)
    else:
        raise ValueError(kind)
    return _finish(x, env, rng)


# -- keywords -------------------------------------------------------------------------------------------------------
# (F1, F2, F3) in Hz of five vowels, adult averages (Peterson & Barney)
VOWELS = {"a": (730, 1090, 2440), "i": (270, 2290, 3010), "u": (300, 870, 2240), "e": (530, 1840, 2480),
          "o": (570, 840, 2410)}
WORDS = {  # onset consonant + vowel per syllable; ami/ima and suto/tosu differ only in order
    "ami": [("", "a"), ("m", "i")], "ima": [("", "i"), ("m", "a")], "suto": [("s", "u"), ("t", "o")],
    "tosu": [("t", "o"), ("s", "u")], "measi": [("m", "e"), ("", "a"), ("s", "i")], "seta": [("s", "e"), ("t", "a")],
    "titi": [("t", "i"), ("t", "i")], "momo": [("m", "o"), ("m", "o")], "usea": [("", "u"), ("s", "e"), ("", "a")],
    "tamu": [("t", "a"), ("m", "u")],
}
KEYWORD_CLASSES = [(w, f"word '{w}'") for w in WORDS]


def _bandpass_noise(n: int, lo: float, hi: float, rng: np.random.Generator) -> np.ndarray:
    spec = np.fft.rfft(rng.standard_normal(n))
    freqs = np.fft.rfftfreq(n, 1 / SR)
    spec[(freqs < lo) | (freqs > hi)] = 0
    out = np.fft.irfft(spec, n)
    return out / (np.abs(out).max() + 1e-9)


def _vowel(formants, f0: float, slope: float, scale: float, n: int) -> np.ndarray:
    """A voiced vowel: harmonics of a gliding f0, weighted by Gaussian formant resonances (scaled vocal tract)."""
    t = np.arange(n) / SR
    f0_t = f0 * (1 + slope * t / max(t[-1], 1e-3))
    phase = 2 * np.pi * np.cumsum(f0_t) / SR
    out = np.zeros(n)
    for h in range(1, int(4000 / f0) + 1):
        f = f0 * h
        gain = sum(np.exp(-((f - fk * scale) ** 2) / (2 * (60 + 0.06 * fk) ** 2)) for fk in formants)
        out += (gain + 0.02) / h**0.5 * np.sin(h * phase)
    ramp = np.minimum(1.0, np.minimum(np.arange(n), np.arange(n)[::-1]) / (0.02 * SR))
    return out * ramp


def synth_keyword(word: str, seconds: float, rng: np.random.Generator) -> np.ndarray:
    """One spoken ``word`` by a random voice at a random time, over faint noise."""
    n = int(seconds * SR)
    f0, scale = rng.uniform(90, 260), rng.uniform(0.85, 1.2)
    syll = rng.uniform(0.14, 0.24)
    parts = []
    for onset, vowel in WORDS[word]:
        if onset == "s":
            parts.append(0.5 * _bandpass_noise(int(0.08 * SR), 4000, 7500, rng))
        elif onset == "t":
            parts += [np.zeros(int(0.03 * SR)), 0.8 * _bandpass_noise(int(0.015 * SR), 1500, 7000, rng)]
        elif onset == "m":
            parts.append(0.4 * _vowel((250, 1200, 2300), f0, 0.0, scale, int(0.06 * SR)))
        parts.append(_vowel(VOWELS[vowel], f0, rng.uniform(-0.15, 0.1), scale, int(syll * SR)))
    speech = np.concatenate(parts)[:n]
    x = np.zeros(n)
    start = rng.integers(0, n - len(speech) + 1)
    x[start : start + len(speech)] = speech
    return _finish(x, np.ones(n), rng)


# -- instruments ----------------------------------------------------------------------------------------------------
INSTRUMENT_CLASSES = [
    ("pluck", "plucked string"), ("bowed", "bowed string with vibrato"), ("flute", "breathy flute"),
    ("clarinet", "odd-harmonic reed"), ("bell", "bell (inharmonic partials)"), ("brass", "brass (brightening attack)"),
    ("organ", "organ (octave partials)"), ("marimba", "marimba (fast decay)"),
]


def _note(kind: str, f0: float, n: int, rng: np.random.Generator) -> np.ndarray:
    t = np.arange(n) / SR
    if kind == "pluck":
        return sum(np.sin(2 * np.pi * f0 * h * t) / h for h in range(1, 8)) * np.exp(-t * rng.uniform(6, 12))
    if kind == "bowed":
        vib = np.sin(2 * np.pi * rng.uniform(5, 7) * t) * 0.01 * f0
        phase = 2 * np.pi * np.cumsum(f0 + vib) / SR
        return sum(np.sin(h * phase) / h for h in range(1, 10)) * np.minimum(1.0, t / 0.15)
    if kind == "flute":
        breath = np.convolve(rng.standard_normal(n), np.ones(8) / 8, mode="same")
        return np.sin(2 * np.pi * f0 * t) + 0.2 * np.sin(4 * np.pi * f0 * t) + 0.15 * breath
    if kind == "clarinet":
        return sum(np.sin(2 * np.pi * f0 * h * t) / h for h in range(1, 12, 2))
    if kind == "bell":
        return sum(np.sin(2 * np.pi * f0 * r * t) * np.exp(-t * d) for r, d in ((1, 1.5), (2.76, 2.5), (5.4, 4), (8.9, 6)))
    if kind == "brass":
        bright = np.minimum(1.0, t / 0.2)
        return sum(np.sin(2 * np.pi * f0 * h * t) * bright ** (h / 3) / h**0.7 for h in range(1, 10))
    if kind == "organ":
        return sum(np.sin(2 * np.pi * f0 * h * t) for h in (1, 2, 4, 8))
    if kind == "marimba":
        return (np.sin(2 * np.pi * f0 * t) + 0.5 * np.sin(2 * np.pi * f0 * 3.9 * t) * np.exp(-t * 30)) * np.exp(-t * 15)
    raise ValueError(kind)


def synth_instrument(kind: str, seconds: float, rng: np.random.Generator) -> np.ndarray:
    """One to three notes of instrument ``kind`` at random pitches (150-900 Hz) and onsets."""
    n = int(seconds * SR)
    x = np.zeros(n)
    notes = int(rng.integers(1, 4))
    for _ in range(notes):
        length = int(rng.uniform(0.25, 0.7) * SR)
        start = int(rng.integers(0, max(1, n - length)))
        note = _note(kind, rng.uniform(150, 900), min(length, n - start), rng)
        x[start : start + len(note)] += note / (np.abs(note).max() + 1e-9)
    return _finish(x, np.ones(n), rng)


@dataclass(frozen=True)
class SyntheticTask:
    classes: list[tuple[str, str]]  # (id, display name)
    synth: Callable[[str, float, np.random.Generator], np.ndarray]


TASKS = {
    "events": SyntheticTask(EVENT_CLASSES, synth_event),
    "keywords": SyntheticTask(KEYWORD_CLASSES, synth_keyword),
    "instruments": SyntheticTask(INSTRUMENT_CLASSES, synth_instrument),
}


@dataclass
class Corpus:
    root: Path
    pool: Path  # unlabeled pretraining list
    train: Path
    test: Path
    labels: Path
    classes: int = 0

    def train_subset(self, per_class: int) -> Path:
        """A train list of the first ``per_class`` clips of every class (the train list is class-interleaved)."""
        data = json.loads(self.train.read_text())["data"][: per_class * self.classes]
        path = self.root / f"train_{per_class}.json"
        path.write_text(json.dumps({"data": data}, indent=1))
        return path


def make_corpus(root: str | Path, *, pool: int = 720, train_per_class: int = 6, test_per_class: int = 20,
                seconds: float = 1.28, seed: int = 0, task: str = "events") -> Corpus:
    """Write a corpus of ``task`` (wav files, SSAST JSON lists and a label CSV) under ``root``; idempotent.

    The train list is class-interleaved, so its first ``k * classes`` entries hold ``k`` clips of every class.
    """
    if task not in TASKS:
        raise ValueError(f"unknown synthetic task {task!r}; one of {', '.join(TASKS)}")
    spec = TASKS[task]
    root = Path(root)
    audio = root / "audio"
    audio.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    lists: dict[str, list[dict]] = {"pool": [], "train": [], "test": []}
    sizes = {"pool": pool, "train": train_per_class * len(spec.classes), "test": test_per_class * len(spec.classes)}
    for split, count in sizes.items():
        for i in range(count):
            cls = spec.classes[i % len(spec.classes)] if split != "pool" else spec.classes[rng.integers(len(spec.classes))]
            mid = cls[0]
            path = audio / f"{split}_{i:04d}_{mid}.wav"
            wave = spec.synth(mid, seconds, rng)
            if not path.exists():
                sf.write(path, wave, SR, subtype="PCM_16")
            entry = {"wav": f"audio/{path.name}"}
            if split != "pool":
                entry["labels"] = mid
            lists[split].append(entry)
    return write_lists(root, lists, spec.classes)


def write_lists(root: Path, lists: dict[str, list[dict]], classes: list[tuple[str, str]]) -> Corpus:
    """Write the pool/train/test JSON lists and the label CSV of a corpus under ``root``; the :class:`Corpus`."""
    for split, data in lists.items():
        (root / f"{split}.json").write_text(json.dumps({"data": data}, indent=1))
    csv = root / "labels.csv"
    csv.write_text("index,mid,display_name\n" + "".join(f"{i},{m},\"{n}\"\n" for i, (m, n) in enumerate(classes)))
    return Corpus(root, root / "pool.json", root / "train.json", root / "test.json", csv, len(classes))
