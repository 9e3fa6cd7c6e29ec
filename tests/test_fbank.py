"""Parity of the batched Kaldi fbank with torchaudio's reference, on varied signals, lengths, dtypes and devices."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torchaudio.compliance.kaldi as K

import ssast.audio.fbank as fbank_mod
from ssast.audio.fbank import FeatureError, frames_for, kaldi_fbank, max_samples, mel_matrix

SR = 16000
TOL = 1e-4  # issue 3 asks for <= 1e-3; we hold 1e-4


def reference(wave: torch.Tensor) -> torch.Tensor:
    """torchaudio's fbank with exactly the SSAST arguments."""
    return K.fbank(
        wave[None],
        htk_compat=True,
        sample_frequency=SR,
        use_energy=False,
        window_type="hanning",
        num_mel_bins=128,
        dither=0.0,
        frame_shift=10,
    )


def speech_like(n: int, rng: np.random.Generator) -> np.ndarray:
    """Voiced-speech stand-in: harmonics of a vibrato f0 under a syllable-rate envelope, plus breath noise."""
    t = np.arange(n) / SR
    f0 = 120 + 15 * np.sin(2 * np.pi * 5 * t)
    phase = 2 * np.pi * np.cumsum(f0) / SR
    x = sum(np.sin(k * phase) / k for k in range(1, 25))
    env = 0.5 * (1 + np.sin(2 * np.pi * 3 * t)) ** 2
    return 0.1 * env * x + 0.003 * rng.standard_normal(n)


def signal(kind: str, n: int, seed: int = 0) -> torch.Tensor:
    rng = np.random.default_rng(seed)
    t = np.arange(n) / SR
    if kind == "speech":
        x = speech_like(n, rng)
    elif kind == "tone":
        x = 0.5 * np.sin(2 * np.pi * 440 * t) + 0.2 * np.sin(2 * np.pi * 3150 * t + 1)
    elif kind == "noise":
        x = 0.3 * rng.standard_normal(n)
    elif kind == "silence":
        x = np.zeros(n)
    elif kind == "quiet":
        x = 1e-6 * rng.standard_normal(n) + 3e-6 * np.sin(2 * np.pi * 1000 * t)
    elif kind == "dc":
        x = 0.4 + 0.05 * np.sin(2 * np.pi * 200 * t)  # a DC offset: per-frame DC removal must cancel it
    else:  # pragma: no cover - test bug
        raise AssertionError(kind)
    return torch.from_numpy(np.asarray(x, dtype=np.float32))


KINDS = ["speech", "tone", "noise", "silence", "quiet", "dc"]
LENGTHS = [400, 401, 560, 16000, 160000]


@pytest.mark.parametrize("n", LENGTHS)
@pytest.mark.parametrize("kind", KINDS)
def test_matches_torchaudio(kind: str, n: int) -> None:
    w = signal(kind, n)
    ref = reference(w)
    out = kaldi_fbank(w)
    assert out.shape == ref.shape == (frames_for(n), 128)
    assert out.dtype == torch.float32
    assert (out - ref).abs().max().item() <= TOL


def test_silence_is_log_eps() -> None:
    out = kaldi_fbank(torch.zeros(2, 1600))
    assert torch.all(out == math.log(torch.finfo(torch.float32).eps))


def test_shorter_than_a_window_gives_no_frames() -> None:
    # torchaudio refuses such clips with an AssertionError; we return an empty (0, mel) result instead.
    with pytest.raises(AssertionError):
        reference(torch.randn(399))
    assert kaldi_fbank(torch.randn(399)).shape == (0, 128)
    assert kaldi_fbank(torch.randn(3, 10)).shape == (3, 0, 128)
    assert kaldi_fbank(torch.randn(0)).shape == (0, 128)


def test_batched_equals_per_clip_and_reference(monkeypatch: pytest.MonkeyPatch) -> None:
    clips = torch.stack([signal(k, 16000 + 37, seed=i) for i, k in enumerate(["speech", "noise", "tone", "quiet"])])
    per_clip = torch.stack([kaldi_fbank(c) for c in clips])
    refs = torch.stack([reference(c) for c in clips])
    batched = kaldi_fbank(clips)
    assert batched.shape == (4, 98, 128)  # 1 + (16037 - 400) // 160
    assert torch.equal(batched, per_clip)
    assert (batched - refs).abs().max().item() <= TOL
    # CPU blocks of an odd size (boundaries inside clips) give the same numbers.
    monkeypatch.setattr(fbank_mod, "_CPU_BLOCK", 7)
    assert (kaldi_fbank(clips) - batched).abs().max().item() <= 1e-5


def test_whole_batch_path_matches_blocked_path() -> None:
    # The accelerator path frames the whole batch in one pass; run that code on the CPU and compare.
    clips = torch.stack([signal("speech", 8000, seed=s) for s in range(3)])
    frames_view = clips.unfold(-1, 400, 160)
    bank = mel_matrix(128, SR, 512, clips.device)
    win = torch.hann_window(400, periodic=False)
    whole = fbank_mod._frames_to_fbank(frames_view, win, bank, 512, 0.97, 0.0, None)
    assert whole.shape == (3, frames_for(8000), 128)
    assert (whole - kaldi_fbank(clips)).abs().max().item() <= 1e-5


def test_frame_counts_and_max_samples() -> None:
    for n in [399, 400, 401, 559, 560, 16000, 160000, 163840]:
        expect = 0 if n < 400 else reference(torch.randn(n)).shape[0]
        assert frames_for(n) == expect
    assert frames_for(160000) == 998  # 10 s -> 998 frames, as the facts say
    for target in [1, 2, 128, 512, 1024]:
        assert frames_for(max_samples(target)) == target
        assert frames_for(max_samples(target) - 1) == target - 1
    with pytest.raises(FeatureError, match="target_length"):
        max_samples(0)


def test_zero_padding_leaves_real_frames_unchanged() -> None:
    # The batch contract: frames of a zero-padded wave equal the real clip's frames for index < num_frames.
    w = signal("speech", 5000)
    padded = torch.nn.functional.pad(w, (0, 3000))
    n = frames_for(5000)
    assert torch.equal(kaldi_fbank(padded)[:n], kaldi_fbank(w))


def test_dtypes_and_autocast() -> None:
    w = signal("speech", 4000)
    ref = reference(w)
    out64 = kaldi_fbank(w.double())
    assert out64.dtype == torch.float64
    assert (out64 - reference(w.double())).abs().max().item() <= 1e-9
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out_ac = kaldi_fbank(w)
    assert out_ac.dtype == torch.float32
    assert (out_ac - ref).abs().max().item() <= TOL
    out_half = kaldi_fbank(w.half())  # computed in fp32 from the rounded samples
    assert out_half.dtype == torch.float32
    assert (out_half - reference(w.half().float())).abs().max().item() <= TOL


def test_other_mel_sizes_and_cache() -> None:
    w = signal("tone", 3200)
    ref = K.fbank(w[None], htk_compat=True, use_energy=False, window_type="hanning", num_mel_bins=64, dither=0.0)
    assert (kaldi_fbank(w, num_mel_bins=64) - ref).abs().max().item() <= TOL
    a = mel_matrix(64, SR, 512, torch.device("cpu"))
    assert a is mel_matrix(64, SR, 512, torch.device("cpu"))
    assert a.shape == (257, 64) and torch.all(a[-1] == 0)


def test_dither_is_reproducible_with_a_generator() -> None:
    w = signal("silence", 2000)
    a = kaldi_fbank(w, dither=1.0, generator=torch.Generator().manual_seed(3))
    b = kaldi_fbank(w, dither=1.0, generator=torch.Generator().manual_seed(3))
    c = kaldi_fbank(w, dither=1.0, generator=torch.Generator().manual_seed(4))
    assert torch.equal(a, b) and not torch.equal(a, c)
    # Dither lifted silence off the floor in every bin that has a filter (the lowest of 128 mel filters are
    # narrower than one FFT bin and stay empty, at log(eps), in torchaudio too).
    live = mel_matrix(128, SR, 512, torch.device("cpu")).sum(0) > 0
    assert 0 < int((~live).sum()) < 10
    assert a[:, live].min() > math.log(torch.finfo(torch.float32).eps) + 3


def test_bad_input_raises_clear_error() -> None:
    with pytest.raises(FeatureError, match=r"\(samples,\) or \(batch, samples\)"):
        kaldi_fbank(torch.zeros(2, 1, 400))
    with pytest.raises(FeatureError, match="floating-point"):
        kaldi_fbank(torch.zeros(400, dtype=torch.int16))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_matches_torchaudio() -> None:
    clips = torch.stack([signal(k, 16000, seed=i) for i, k in enumerate(KINDS)])
    refs = torch.stack([reference(c) for c in clips])
    out = kaldi_fbank(clips.cuda())
    assert out.is_cuda and out.shape == refs.shape
    assert (out.cpu() - refs).abs().max().item() <= 1e-3
    # TF32 matmuls (a common speed setting) must not leak into the features.
    prev = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision("high")
    try:
        with torch.autocast("cuda", dtype=torch.bfloat16):
            out_fast = kaldi_fbank(clips.cuda())
    finally:
        torch.set_float32_matmul_precision(prev)
    assert out_fast.dtype == torch.float32
    assert (out_fast.cpu() - refs).abs().max().item() <= 1e-3
