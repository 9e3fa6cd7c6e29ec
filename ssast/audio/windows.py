"""Long recordings as overlapping windows, decoded as a stream.

A recording longer than the window is read in window-sized blocks with overlap (soundfile's block reads), so only
one window is in memory however long the file is. Windows are placed every ``hop`` samples of the file's own rate,
from its start, until one reaches the end; the last may be shorter and is then padded like a short clip (a tail shorter
than one 25 ms fbank frame is dropped: it gives no frame). Every window goes through the same steps as a whole clip
(mono mix, resampling of that window on its own, DC removal of that window), so its features equal those of a file
holding just its samples. Windows of digital silence are kept (silence is normal inside a recording).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Optional

import numpy as np

from ssast.audio.fbank import max_samples, window_hop
from ssast.audio.io import audio_error, load_audio, min_samples, open_audio, to_model_wave
from ssast.config import AudioConfig, ConfigError

FBANK_FRAME_S = 0.025


@dataclass(frozen=True)
class Windowing:
    """Window length and hop in seconds (checked by :func:`resolve_windowing`)."""

    window: float
    hop: float

    def samples(self, sample_rate: int) -> tuple[int, int]:
        """(window, hop) in samples at ``sample_rate``; the window rounds up so the model's length is always reached."""
        return math.ceil(self.window * sample_rate - 1e-6), max(1, round(self.hop * sample_rate))


@dataclass
class AudioWindow:
    """One window of a recording: its place in seconds and its model-ready samples (mono, model rate, DC removed)."""

    start: float
    end: float
    wave: np.ndarray


def model_samples(audio: AudioConfig) -> int:
    """Samples the model sees at its rate: the fewest that give ``target_length`` fbank frames."""
    return max_samples(audio.target_length, *window_hop(audio.sample_rate))


def model_seconds(audio: AudioConfig) -> float:
    """The model's window in seconds: (target_length - 1) hops of 10 ms plus one 25 ms frame (10.255 s for 1024)."""
    return model_samples(audio) / audio.sample_rate


def resolve_windowing(audio: AudioConfig, window: Optional[float] = None, hop: Optional[float] = None) -> Windowing:
    """The windowing for a model: ``window`` defaults to the model's length, ``hop`` to half the window.

    Raises ConfigError (one line) for a window longer than the model reads or shorter than one fbank frame, and for a
    hop that is not above 0 and at most the window (a longer hop would skip audio).
    """
    longest = model_seconds(audio)
    w = longest if window is None else float(window)
    if not math.isfinite(w) or w < FBANK_FRAME_S:
        raise ConfigError(f"--window {window}: shorter than one 25 ms fbank frame; give at least {FBANK_FRAME_S} s")
    if w > longest + 1e-9:
        raise ConfigError(f"--window {window}: longer than the model's input ({audio.target_length} frames = "
                          f"{longest:g} s of audio); give at most {longest:g} s")
    h = w / 2 if hop is None else float(hop)
    if not math.isfinite(h) or h <= 0 or h > w + 1e-9:
        raise ConfigError(f"--hop {hop}: must be above 0 and at most the window ({w:g} s), so every sample is in a window")
    return Windowing(w, min(h, w))


def iter_windows(path: str | Path, audio: AudioConfig, windowing: Windowing) -> Iterator[AudioWindow]:
    """The windows of one file, in order. A file no longer than the window is one window, read exactly as a clip."""
    name = str(path)
    longest = model_samples(audio)
    with open_audio(path, name) as f:
        sr, total = int(f.samplerate), int(f.frames)
        win, hop = windowing.samples(sr)
        if total > win:
            yield from _stream(f, name, audio, longest, win, hop)
            return
    # a short clip: the path every clip has always taken (its silence is an error, as for any clip)
    wave = load_audio(path, sample_rate=audio.sample_rate, max_samples=longest, crop="start")
    yield AudioWindow(0.0, total / sr, wave)


def _stream(f, name: str, audio: AudioConfig, longest: int, win: int, hop: int) -> Iterator[AudioWindow]:
    """Window-sized block reads with ``win - hop`` samples of overlap, each block made into a model-ready window."""
    sr = int(f.samplerate)
    blocks = f.blocks(blocksize=win, overlap=win - hop, dtype="float32", always_2d=True)
    start = 0
    while True:
        try:
            block = next(blocks)
        except StopIteration:
            return
        except Exception as e:  # libsndfile errors part-way through a damaged file
            problem = f"decoding failed at {start / sr:.2f} s ({e}); the file is damaged"
            raise audio_error(name, "corrupt", problem) from None
        n = block.shape[0]
        if start and n * audio.sample_rate < min_samples(audio.sample_rate) * sr:
            return  # a tail shorter than one fbank frame carries no frame
        where = f"{name} (window {start / sr:.2f}-{(start + n) / sr:.2f} s)"
        wave = to_model_wave(block, sr, audio.sample_rate, longest, where, allow_silent=True)
        yield AudioWindow(start / sr, (start + n) / sr, wave)
        start += hop
