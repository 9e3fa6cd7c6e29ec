"""Audio decoding with soundfile: mono, 16 kHz, DC removed, partial reads of long clips, clear errors for bad input.

Every problem a user's data can cause (missing, corrupt, empty, NaN, silent, too short) raises :class:`AudioError`,
whose message names the clip and whose ``kind`` is a short word the data loader counts skipped clips by.
"""
from __future__ import annotations

import io
import math
import os
from pathlib import Path
from typing import BinaryIO, Literal

import numpy as np
import soundfile as sf
import torch

from ssast.environment import require

# Short categories of bad audio; the loader's skip summary counts clips by these words.
AUDIO_ERROR_KINDS = ("missing", "corrupt", "empty", "nonfinite", "silent", "too_short")

AudioSource = str | Path | bytes | BinaryIO
CropMode = Literal["start", "random", "center"]


class AudioError(ValueError):
    """A clip that cannot be used; the message names the clip and says what is wrong.

    ``kind`` is one of AUDIO_ERROR_KINDS; ``path`` is the clip's name. Constructible from a message alone so that
    DataLoader workers can re-raise it in the main process.
    """

    def __init__(self, msg: str, *, kind: str = "corrupt", path: str = "") -> None:
        super().__init__(msg)
        self.kind = kind
        self.path = path

    def __reduce__(self):  # keep kind/path across process boundaries (pickling)
        return (_rebuild_audio_error, (str(self), self.kind, self.path))


def _rebuild_audio_error(msg: str, kind: str, path: str) -> AudioError:
    return AudioError(msg, kind=kind, path=path)


def audio_error(name: str, kind: str, problem: str) -> AudioError:
    """Build an AudioError whose text starts with the kind, then names the clip and the fix."""
    return AudioError(f"{kind}: {name}: {problem}", kind=kind, path=name)


def _source_name(source: AudioSource, name: str | None) -> str:
    if name:
        return name
    if isinstance(source, (str, Path)):
        return str(source)
    return getattr(source, "name", None) or "<in-memory audio>"


def open_audio(source: AudioSource, name: str) -> sf.SoundFile:
    """Open a SoundFile, turning every failure into an AudioError that names the clip."""
    if isinstance(source, (str, Path)):
        if not os.path.exists(source):
            raise audio_error(name, "missing", "file not found; check the path in your list or folder")
        if os.path.isdir(source):
            raise audio_error(name, "missing", "is a folder, not an audio file; check the path in your list")
        if os.path.isfile(source) and os.path.getsize(source) == 0:
            raise audio_error(name, "empty", "the file is 0 bytes; re-export or remove it")
    elif isinstance(source, (bytes, bytearray, memoryview)):
        if len(source) == 0:
            raise audio_error(name, "empty", "no audio bytes; re-encode or remove the clip")
        source = io.BytesIO(bytes(source))
    try:
        return sf.SoundFile(source)
    except Exception as e:  # libsndfile raises LibsndfileError/RuntimeError/TypeError for bad data
        raise audio_error(
            name, "corrupt", f"cannot decode audio ({e}); the file is damaged or not wav/flac/ogg/mp3"
        ) from None


def audio_info(path: str | Path) -> tuple[int, int, int]:
    """(frames, sample rate, channels) from the header only: cheap, for durations and indexes."""
    name = str(path)
    with open_audio(path, name) as f:
        return int(f.frames), int(f.samplerate), int(f.channels)


def wav_truncation(path: str | Path) -> str | None:
    """Why a RIFF/WAV file is cut short (its data chunk promises more bytes than the file holds), or None.

    libsndfile decodes such a file up to where it ends, silently; strict mode (``data.strict``) refuses it with this
    reason, and the default mode uses the part that is there. Headers of streamed WAVs (size 0 or 0xFFFFFFFF) promise
    nothing and pass."""
    try:
        with open(path, "rb") as f:
            head = f.read(12)
            if len(head) < 12 or head[:4] != b"RIFF" or head[8:12] != b"WAVE":
                return None
            size = os.fstat(f.fileno()).st_size
            while True:
                chunk = f.read(8)
                if len(chunk) < 8:
                    return None
                cid, n = chunk[:4], int.from_bytes(chunk[4:], "little")
                if cid == b"data":
                    have = size - f.tell()
                    return (f"the data chunk promises {n} bytes but the file holds {have}"
                            if n not in (0, 0xFFFFFFFF) and have < n else None)
                f.seek(n + (n & 1), os.SEEK_CUR)
    except OSError:
        return None


def require_complete(path: str | Path, name: str) -> None:
    """Strict mode's check: an AudioError (corrupt) naming ``name`` when ``path`` is a WAV cut short."""
    cut = wav_truncation(path)
    if cut:
        raise audio_error(name, "corrupt", f"truncated: {cut}; re-export it or leave strict mode off")


def crop_offset(total: int, window: int, crop: CropMode, rng: np.random.Generator | None) -> int:
    """Start of a ``window``-long crop inside ``total`` samples (0 when the clip is not longer)."""
    if total <= window:
        return 0
    if crop == "start":
        return 0
    if crop == "center":
        return (total - window) // 2
    if crop == "random":
        rng = rng if rng is not None else np.random.default_rng()
        return int(rng.integers(0, total - window + 1))
    raise ValueError(f"crop must be 'start', 'random' or 'center', got {crop!r}")


def resample(x: np.ndarray, orig: int, new: int) -> np.ndarray:
    """Band-limited resampling of a 1-D float signal (torchaudio's sinc interpolation).

    The only use of torchaudio at run time: imported here, on the first clip that needs it, so 16 kHz data never loads
    its compiled library, and a torchaudio that cannot load is one line (``EnvironmentMismatch``), not a traceback.
    """
    AF = require("torchaudio.functional")

    g = math.gcd(orig, new)
    return AF.resample(torch.from_numpy(x), orig // g, new // g).numpy()


def load_audio(
    source: AudioSource,
    *,
    sample_rate: int = 16000,
    max_samples: int | None = None,
    crop: CropMode = "start",
    rng: np.random.Generator | None = None,
    name: str | None = None,
) -> np.ndarray:
    """Decode a clip to mono float32 at ``sample_rate`` with its DC offset removed.

    When ``max_samples`` is set, only a window of that many output samples is returned; for seekable formats just that
    window is read from disk (its length computed in the file's own rate, then resampled). ``crop`` places the window
    (``random`` draws from ``rng``); the DC offset removed is that of the returned window. Bad input raises :class:`AudioError`; an all-zero or constant *window* counts as
    silent even when other parts of the file are not.
    """
    name = _source_name(source, name)
    with open_audio(source, name) as f:
        sr = int(f.samplerate)
        total = int(f.frames)
        if total <= 0:
            raise audio_error(name, "empty", "the file contains no samples; re-export or remove it")
        # Window in the file's own rate: enough input samples to give max_samples after resampling.
        need = total if max_samples is None else min(total, math.ceil(max_samples * sr / sample_rate))
        offset = crop_offset(total, need, crop, rng)
        try:
            if need < total and f.seekable():
                f.seek(offset)
                data = f.read(need, dtype="float32", always_2d=True)
            else:
                data = f.read(dtype="float32", always_2d=True)
                data = data[offset : offset + need]
        except Exception as e:
            raise audio_error(name, "corrupt", f"decoding failed part-way ({e}); the file is damaged") from None
    if data.shape[0] == 0:
        raise audio_error(name, "empty", "no samples could be decoded; re-export or remove it")
    return to_model_wave(data, sr, sample_rate, max_samples, name)


def to_model_wave(data: np.ndarray, sr: int, sample_rate: int, max_samples: int | None, name: str, *,
                  allow_silent: bool = False) -> np.ndarray:
    """Decoded (samples, channels) float32 at ``sr`` -> mono at ``sample_rate``, at most ``max_samples``, DC removed.

    The one path from read samples to a clip, shared by whole clips and the windows of long recordings, so that a
    window is exactly the clip its samples would be on their own. ``allow_silent``: a constant stretch is not an error
    (silence inside a long recording is normal; a clip that is all silence is not).
    """
    x = data.mean(axis=1, dtype=np.float32) if data.shape[1] > 1 else data[:, 0]
    if not np.isfinite(x).all():
        raise audio_error(name, "nonfinite", "contains NaN or infinite samples; fix or remove the clip")
    if x.max() == x.min() and not allow_silent:
        raise audio_error(name, "silent", "every sample has the same value (digital silence); remove the clip")
    if sr != sample_rate:
        x = resample(np.ascontiguousarray(x), sr, sample_rate)
    if max_samples is not None and x.shape[0] > max_samples:
        x = x[:max_samples]
    min_len = min_samples(sample_rate)
    if x.shape[0] < min_len:
        raise audio_error(
            name, "too_short", f"{x.shape[0]} samples at {sample_rate} Hz is shorter than one 25 ms window ({min_len})"
        )
    x = x - x.mean(dtype=np.float64).astype(np.float32)
    return np.ascontiguousarray(x, dtype=np.float32)


def min_samples(sample_rate: int) -> int:
    """One 25 ms analysis window: fewer samples give no fbank frame."""
    return int(round(0.025 * sample_rate))
