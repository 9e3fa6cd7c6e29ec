"""Length handling, normalisation, the FeatureExtractor pipeline and dataset statistics."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torchaudio.compliance.kaldi as K

from ssast.audio.augment import sample_mixup
from ssast.audio.fbank import FeatureError, frames_for, max_samples
from ssast.audio.features import FeatureExtractor, mask_padding, normalize, pad_or_crop
from ssast.audio.stats import fbank_stats
from ssast.config import AudioConfig, AugmentConfig

SR = 16000


def reference(wave: torch.Tensor) -> torch.Tensor:
    return K.fbank(
        wave[None], htk_compat=True, sample_frequency=SR, use_energy=False, window_type="hanning",
        num_mel_bins=128, dither=0.0, frame_shift=10,
    )


def random_clips(lengths: list[int], seed: int = 0) -> list[torch.Tensor]:
    """Noisy chirps of the given lengths, DC removed, like the loader's clips."""
    rng = np.random.default_rng(seed)
    clips = []
    for n in lengths:
        t = np.arange(n) / SR
        x = 0.2 * np.sin(2 * np.pi * (200 + 900 * t) * t) + 0.05 * rng.standard_normal(n)
        clips.append(torch.from_numpy((x - x.mean()).astype(np.float32)))
    return clips


def collate(clips: list[torch.Tensor], target_length: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The loader's batch contract: crop to max_samples, zero-pad to a common length, real frame counts."""
    cut = [c[: max_samples(target_length)] for c in clips]
    size = max(len(c) for c in cut)
    wave = torch.stack([torch.nn.functional.pad(c, (0, size - len(c))) for c in cut])
    return wave, torch.tensor([frames_for(len(c)) for c in cut])


# ---------------------------------------------------------------------------------------------------------------
# pad_or_crop / normalize


def test_pad_at_the_end_with_zeros() -> None:
    x = torch.randn(2, 5, 3)
    out = pad_or_crop(x, 8)
    assert out.shape == (2, 8, 3)
    assert torch.equal(out[:, :5], x) and torch.all(out[:, 5:] == 0)
    assert pad_or_crop(x[0], 8).shape == (8, 3)  # 2-D input stays 2-D


def test_crop_start_and_center() -> None:
    x = torch.arange(10.0)[None, :, None].repeat(2, 1, 4)
    assert torch.equal(pad_or_crop(x, 4, "start")[0, :, 0], torch.arange(4.0))
    assert torch.equal(pad_or_crop(x, 4, "center")[0, :, 0], torch.arange(3.0, 7.0))
    assert torch.equal(pad_or_crop(x, 10, "random"), x)  # exact length: unchanged


def test_random_crop_is_per_clip_contiguous_and_seeded() -> None:
    x = torch.arange(50.0)[None, :, None].repeat(16, 1, 2)
    a = pad_or_crop(x, 10, "random", generator=torch.Generator().manual_seed(0))
    b = pad_or_crop(x, 10, "random", generator=torch.Generator().manual_seed(0))
    assert torch.equal(a, b)
    starts = a[:, 0, 0]
    assert torch.equal(a[:, :, 0], starts[:, None] + torch.arange(10.0))  # contiguous windows
    assert starts.min() >= 0 and starts.max() <= 40
    assert len(set(starts.tolist())) > 3  # independent starts per clip


def test_crop_respects_real_frames() -> None:
    x = torch.arange(50.0)[None, :, None].repeat(8, 1, 1)
    real = torch.tensor([50, 30, 12, 5, 50, 30, 12, 5])
    out = pad_or_crop(x, 10, "random", generator=torch.Generator().manual_seed(1), num_frames=real)
    ends = out[:, -1, 0] + 1
    assert torch.all(ends <= torch.maximum(real, torch.tensor(10)).float())
    centre = pad_or_crop(x, 10, "center", num_frames=real)
    assert centre[:, 0, 0].tolist() == [20, 10, 1, 0, 20, 10, 1, 0]


def test_pad_or_crop_errors() -> None:
    with pytest.raises(FeatureError, match="crop mode"):
        pad_or_crop(torch.zeros(1, 4, 2), 2, "middle")  # type: ignore[arg-type]
    with pytest.raises(FeatureError, match="target_length"):
        pad_or_crop(torch.zeros(1, 4, 2), 0)


def test_normalize_values() -> None:
    x = torch.tensor([-4.2677393, 0.0, 4.8702555])
    out = normalize(x, -4.2677393, 4.5689974)
    assert torch.allclose(out, torch.tensor([0.0, 4.2677393 / 9.1379948, 1.0]), atol=1e-6)


def test_mask_padding() -> None:
    out = mask_padding(torch.ones(2, 4, 3), torch.tensor([1, 3]))
    assert out[:, :, 0].tolist() == [[1, 0, 0, 0], [1, 1, 1, 0]]


# ---------------------------------------------------------------------------------------------------------------
# FeatureExtractor


def test_extractor_equals_torchaudio_pad_normalise_reference() -> None:
    audio = AudioConfig(target_length=64, norm_mean=-6.6268077, norm_std=5.358466)
    lengths = [16000, 4000, 10410, 399]  # longer than target, shorter, exact-ish, shorter than a window
    clips = random_clips(lengths)
    wave, nf = collate(clips, 64)
    out = FeatureExtractor(audio, AugmentConfig())(wave, nf, train=False)
    assert out.shape == (4, 64, 128) and out.dtype == torch.float32
    for i, clip in enumerate(clips):
        clip = clip[: max_samples(64)]
        ref = reference(clip) if len(clip) >= 400 else torch.zeros(0, 128)
        ref = torch.nn.functional.pad(ref, (0, 0, 0, 64 - ref.shape[0]))[:64]  # the authors' zero padding
        ref = (ref - audio.norm_mean) / (2 * audio.norm_std)
        assert (out[i] - ref).abs().max().item() <= 1e-4, f"clip {i}"
    pad_value = -audio.norm_mean / (2 * audio.norm_std)
    for i, n in enumerate(nf.tolist()):
        assert torch.allclose(out[i, n:], torch.full_like(out[i, n:], pad_value))
        if n:
            assert not torch.allclose(out[i, n - 1], torch.full_like(out[i, n - 1], pad_value))


def test_extractor_eval_ignores_augment_and_train_applies_noise_and_shift() -> None:
    audio = AudioConfig(target_length=48)
    wave, nf = collate(random_clips([8000, 8000, 6000], seed=2), 48)
    plain = FeatureExtractor(audio, AugmentConfig())(wave, nf, train=True)  # no augmentation configured
    fx = FeatureExtractor(audio, AugmentConfig(freqm=20, timem=10, noise=True))
    assert torch.equal(fx(wave, nf, train=False), plain)
    noisy = FeatureExtractor(audio, AugmentConfig(noise=True, time_shift=10))
    out = noisy(wave, nf, train=True, generator=torch.Generator().manual_seed(0))
    assert out.shape == plain.shape and not torch.allclose(out, plain)
    for i in range(3):
        # Some roll by at most 10 frames explains the clip up to noise in [0, 0.1).
        fits = [
            s for s in range(-10, 11)
            if 0 <= (d := out[i] - torch.roll(plain[i], s, dims=0)).min() and d.max() < 0.1
        ]
        assert len(fits) == 1, f"clip {i}: shifts {fits}"


@pytest.mark.parametrize("domain", ["raw", "normalized"])
def test_extractor_specaugment_domain(domain) -> None:
    """The authors mask the raw fbank, then normalise: masked cells end at (0 - mean) / (2 std) (+0.467 with the
    AudioSet statistics). specaug_domain=normalized, the departure kept as an option, leaves them at exactly 0."""
    audio = AudioConfig(target_length=48)
    fx = FeatureExtractor(audio, AugmentConfig(freqm=30, timem=20, specaug_domain=domain))
    wave, nf = collate(random_clips([8000] * 6), 48)
    torch.manual_seed(3)
    out = fx(wave, nf, train=True)
    plain = fx(wave, nf, train=False)
    masked = out != plain
    assert masked.any()
    expected = (0 - audio.norm_mean) / (2 * audio.norm_std) if domain == "raw" else 0.0
    assert expected == (pytest.approx(0.4670, abs=1e-4) if domain == "raw" else 0.0)
    assert torch.allclose(out[masked], torch.full_like(out[masked], expected), atol=1e-6)


def test_extractor_fbank_mixup() -> None:
    audio = AudioConfig(target_length=32)
    wave, nf = collate(random_clips([6000, 5000, 4000, 3000]), 32)
    fx = FeatureExtractor(audio, AugmentConfig())
    lam, partner, mixed = sample_mixup(4, 1.0, 10.0, generator=torch.Generator().manual_seed(0))
    plain = fx(wave, nf, train=False)
    out = fx(wave, nf, train=True, mix=(lam, partner))
    expect = lam[:, None, None] * plain + (1 - lam[:, None, None]) * plain[partner]
    assert torch.allclose(out, expect, atol=1e-5)


def test_extractor_shape_errors() -> None:
    fx = FeatureExtractor(AudioConfig(target_length=16), AugmentConfig())
    with pytest.raises(FeatureError, match="num_frames"):
        fx(torch.zeros(2, 4000), torch.tensor([3, 3, 3]), train=False)
    with pytest.raises(FeatureError, match=r"\(batch, samples\)"):
        fx(torch.zeros(4000), torch.tensor([3]), train=False)


# ---------------------------------------------------------------------------------------------------------------
# fbank_stats


def test_fbank_stats_equals_torch_over_real_frames() -> None:
    audio = AudioConfig(target_length=40)
    clips = random_clips([7000, 2000, 8000, 300, 6400, 5000], seed=5)
    batches = [collate(clips[:3], 40), collate(clips[3:], 40)]
    mean, std = fbank_stats(batches, audio)
    real = torch.cat([reference(c[: max_samples(40)]) for c in clips if len(c) >= 400]).double()
    assert mean == pytest.approx(real.mean().item(), abs=1e-5)
    assert std == pytest.approx(real.std().item(), abs=1e-5)
    # The split into batches does not matter.
    one = fbank_stats([collate(clips, 40)], audio)
    assert one == pytest.approx((mean, std), abs=1e-9)


def test_fbank_stats_empty_dataset_error() -> None:
    with pytest.raises(FeatureError, match="fewer than 2"):
        fbank_stats([collate(random_clips([100, 200]), 16)], AudioConfig(target_length=16))
    with pytest.raises(FeatureError, match="batch 0"):
        fbank_stats([torch.zeros(2, 400)], AudioConfig())  # type: ignore[list-item]
