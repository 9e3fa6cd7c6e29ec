"""Decoding: resampling, downmix, DC removal, partial reads, compressed formats, and every kind of bad audio."""
from __future__ import annotations

import io

import numpy as np
import pytest
import soundfile as sf

from conftest import make_wav, synth
from ssast.audio.io import AudioError, audio_info, crop_offset, load_audio


def dominant_hz(x: np.ndarray, sr: int) -> float:
    spec = np.abs(np.fft.rfft(x * np.hanning(len(x))))
    return float(np.argmax(spec) * sr / len(x))


@pytest.mark.parametrize("sr", [8000, 22050, 44100, 48000])
def test_resample_keeps_length_and_pitch(tmp_path, sr):
    path = tmp_path / f"tone_{sr}.wav"
    make_wav(path, 1.0, sr=sr, freq=1000.0)
    x = load_audio(path)
    assert x.dtype == np.float32 and x.ndim == 1
    assert abs(len(x) - 16000) <= 1
    assert abs(dominant_hz(x, 16000) - 1000.0) <= 2.0
    # a band-limited resampler keeps the amplitude of an in-band tone
    assert abs(np.abs(x[2000:-2000]).max() - 0.5) < 0.02


def test_stereo_downmix_is_channel_mean(tmp_path):
    path = tmp_path / "stereo.wav"
    data = make_wav(path, 0.5, channels=2, subtype="FLOAT")
    x = load_audio(path)
    ref = data.mean(axis=1)
    np.testing.assert_allclose(x, ref - ref.mean(), atol=1e-6)


def test_dc_offset_removed(tmp_path):
    path = tmp_path / "dc.wav"
    sf.write(path, synth(0.5, amp=0.3) + 0.4, 16000, subtype="FLOAT")
    x = load_audio(path)
    assert abs(float(x.mean())) < 1e-6
    assert abs(np.abs(x).max() - 0.3) < 1e-3


@pytest.mark.parametrize("ext", ["wav", "flac"])
@pytest.mark.parametrize("crop", ["start", "center", "random"])
def test_partial_read_equals_full_decode_slice(tmp_path, ext, crop):
    path = tmp_path / f"long.{ext}"
    make_wav(path, 2.0, kind="speechlike")
    full = sf.read(path, dtype="float32")[0]
    win = 5000
    part = load_audio(path, max_samples=win, crop=crop, rng=np.random.default_rng(3))
    start = crop_offset(len(full), win, crop, np.random.default_rng(3))
    if crop == "center":
        assert start == (len(full) - win) // 2
    if crop == "random":
        assert start > 0  # a real random offset, not the start
    ref = full[start : start + win]
    np.testing.assert_allclose(part, ref - ref.mean(), atol=1e-6)


def test_partial_read_with_resampling_gives_max_samples(tmp_path):
    path = tmp_path / "long44.flac"
    make_wav(path, 2.0, sr=44100, freq=1000.0)
    x = load_audio(path, max_samples=8000, crop="random", rng=np.random.default_rng(0))
    assert len(x) == 8000
    assert abs(dominant_hz(x, 16000) - 1000.0) <= 2.0


def test_short_clip_not_padded_by_max_samples(tmp_path):
    path = tmp_path / "short.wav"
    make_wav(path, 0.1)
    assert len(load_audio(path, max_samples=16000, crop="random")) == 1600


@pytest.mark.parametrize("ext", ["ogg", "mp3"])
def test_compressed_formats_decode(tmp_path, ext):
    path = tmp_path / f"tone.{ext}"
    try:
        make_wav(path, 1.0, freq=1000.0)
    except Exception as e:  # this libsndfile cannot write the format
        pytest.skip(f"soundfile cannot write {ext}: {e}")
    x = load_audio(path)
    assert abs(len(x) - 16000) < 2000  # codecs may add priming samples
    assert abs(dominant_hz(x, 16000) - 1000.0) <= 3.0
    part = load_audio(path, max_samples=4000, crop="center")
    assert len(part) == 4000


def test_bytes_and_file_objects(tmp_path):
    path = tmp_path / "a.flac"
    make_wav(path, 0.5)
    ref = load_audio(path)
    raw = path.read_bytes()
    np.testing.assert_array_equal(load_audio(raw), ref)
    np.testing.assert_array_equal(load_audio(io.BytesIO(raw)), ref)
    assert audio_info(path) == (8000, 16000, 1)


# ---- bad input: each raises AudioError with its kind, and the message names the clip


def _bad_files(tmp_path):
    """(path, expected kind) for every kind of bad input."""
    cases = []
    cases.append((tmp_path / "missing.wav", "missing"))
    p = tmp_path / "corrupt.wav"
    p.write_bytes(np.random.default_rng(0).bytes(4000))
    cases.append((p, "corrupt"))
    p = tmp_path / "empty.wav"
    p.write_bytes(b"")
    cases.append((p, "empty"))
    p = tmp_path / "zero_length.wav"
    sf.write(p, np.zeros(0, np.float32), 16000)
    cases.append((p, "empty"))
    p = tmp_path / "zeros.wav"
    sf.write(p, np.zeros(16000, np.float32), 16000)
    cases.append((p, "silent"))
    p = tmp_path / "nan.wav"
    x = synth(0.5)
    x[100] = np.nan
    sf.write(p, x, 16000, subtype="FLOAT")
    cases.append((p, "nonfinite"))
    p = tmp_path / "short.wav"
    sf.write(p, synth(0.02), 16000)  # 320 samples < 400
    cases.append((p, "too_short"))
    return cases


def test_every_bad_input_raises_named_error(tmp_path):
    for path, kind in _bad_files(tmp_path):
        with pytest.raises(AudioError) as info:
            load_audio(path)
        assert info.value.kind == kind, path
        assert str(path) in str(info.value)
        assert str(info.value).startswith(f"{kind}: ")


def test_truncated_file_raises(tmp_path):
    path = tmp_path / "cut.flac"
    make_wav(path, 1.0, kind="noise")
    path.write_bytes(path.read_bytes()[:60])  # header only, no frames
    with pytest.raises(AudioError, match="cut.flac"):
        load_audio(path)


def test_audio_error_survives_pickling():
    import pickle

    e = pickle.loads(pickle.dumps(AudioError("silent: x.wav: zeros", kind="silent", path="x.wav")))
    assert (e.kind, e.path, str(e)) == ("silent", "x.wav", "silent: x.wav: zeros")
