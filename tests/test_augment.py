"""SpecAugment, noise + circular shift and mixup: their effects, bounds and per-clip independence."""
from __future__ import annotations

import pytest
import torch

from ssast.audio.augment import mix_fbanks, mix_labels, mix_waves, noise_and_shift, sample_mixup, spec_augment
from ssast.audio.fbank import FeatureError, frames_for


def features(batch: int = 32, frames: int = 100, bins: int = 64) -> torch.Tensor:
    """Strictly positive features, so any 0 in the output is a mask."""
    return torch.rand(batch, frames, bins, generator=torch.Generator().manual_seed(0)) + 0.5


# ---------------------------------------------------------------------------------------------------------------
# SpecAugment


def test_spec_augment_masks_bands_and_spans_within_limits() -> None:
    x = features()
    torch.manual_seed(0)
    out = spec_augment(x, freqm=12, timem=20)
    assert out.shape == x.shape
    zero = out == 0
    kept = ~zero
    assert torch.equal(out[kept], x[kept])  # nothing else changes
    freq_masked = zero.all(dim=1)  # (B, F): whole mel bins zeroed across time
    time_masked = zero.all(dim=2)  # (B, T): whole frames zeroed across bins
    for b in range(x.shape[0]):
        f_idx = freq_masked[b].nonzero().flatten()
        t_idx = time_masked[b].nonzero().flatten()
        assert len(f_idx) <= 12 and len(t_idx) <= 20
        # each mask is one contiguous band
        if len(f_idx):
            assert f_idx[-1] - f_idx[0] + 1 == len(f_idx)
        if len(t_idx):
            assert t_idx[-1] - t_idx[0] + 1 == len(t_idx)
        # every zero lies in the clip's band or span
        assert torch.equal(zero[b], freq_masked[b][None, :] | time_masked[b][:, None])
    widths_f = freq_masked.sum(1)
    starts_t = time_masked.float().argmax(1)
    assert len(set(widths_f.tolist())) > 3 and len(set(starts_t.tolist())) > 3  # independent per clip


def test_spec_augment_off_and_oversized_masks() -> None:
    x = features(4, 10, 8)
    assert torch.equal(spec_augment(x, 0, 0), x)
    torch.manual_seed(1)
    out = spec_augment(x, freqm=50, timem=50)  # wider than the axes: capped, still valid
    assert out.shape == x.shape and torch.all((out == 0) | (out == x))
    with pytest.raises(FeatureError, match=r"\(batch, frames, mel\)"):
        spec_augment(x[0], 4, 4)


# ---------------------------------------------------------------------------------------------------------------
# noise + shift


def test_noise_and_shift_is_a_bounded_roll_plus_small_noise() -> None:
    x = torch.randn(24, 50, 16, generator=torch.Generator().manual_seed(0))
    out = noise_and_shift(x, max_shift=4, generator=torch.Generator().manual_seed(1))
    assert out.shape == x.shape
    shifts = []
    for b in range(x.shape[0]):
        fits = []
        for s in range(-4, 5):
            d = out[b] - torch.roll(x[b], s, dims=0)
            if d.min() >= 0 and d.max() < 0.1:
                fits.append(s)
        assert len(fits) == 1, f"clip {b}: {fits}"
        shifts.append(fits[0])
    assert min(shifts) < 0 < max(shifts)  # both directions, drawn per clip
    assert len(set(shifts)) >= 4


def test_noise_and_shift_reproducible_and_per_clip_amplitude() -> None:
    x = torch.zeros(64, 20, 8)
    a = noise_and_shift(x, generator=torch.Generator().manual_seed(5))
    b = noise_and_shift(x, generator=torch.Generator().manual_seed(5))
    assert torch.equal(a, b)
    peak = a.amax(dim=(1, 2))  # U(0,1) * u / 10 per clip: the clip's peak is close to u / 10
    assert peak.max() < 0.1 and peak.std() > 0.01
    ramp = torch.arange(20.0)[None, :, None].expand(4, 20, 8)
    d = noise_and_shift(ramp, max_shift=0) - ramp  # no shift: only the noise remains
    assert d.min() >= 0 and d.max() < 0.1


# ---------------------------------------------------------------------------------------------------------------
# mixup


def test_sample_mixup_draws() -> None:
    lam, partner, mixed = sample_mixup(4000, 0.6, 10.0, generator=torch.Generator().manual_seed(0))
    assert lam.shape == partner.shape == mixed.shape == (4000,)
    assert partner.dtype == torch.long and mixed.dtype == torch.bool
    assert torch.all((lam >= 0) & (lam <= 1))
    assert torch.all(lam[~mixed] == 1)
    assert torch.all(partner != torch.arange(4000))
    assert partner.min() >= 0 and partner.max() < 4000
    assert abs(mixed.float().mean().item() - 0.6) < 0.04
    m = lam[mixed]
    assert abs(m.mean().item() - 0.5) < 0.01 and abs(m.std().item() - (1 / 84) ** 0.5) < 0.01  # Beta(10, 10)
    again = sample_mixup(4000, 0.6, 10.0, generator=torch.Generator().manual_seed(0))
    assert all(torch.equal(p, q) for p, q in zip((lam, partner, mixed), again))


def test_sample_mixup_edge_cases() -> None:
    lam, partner, mixed = sample_mixup(1, 1.0, 10.0)
    assert lam.tolist() == [1.0] and partner.tolist() == [0] and not mixed.any()
    lam, _, mixed = sample_mixup(8, 0.0, 10.0)
    assert torch.all(lam == 1) and not mixed.any()
    with pytest.raises(FeatureError, match="probability"):
        sample_mixup(4, 1.5, 10.0)


def test_mix_labels_preserves_totals_and_unmixed_rows() -> None:
    labels = torch.nn.functional.one_hot(torch.tensor([0, 1, 2, 3, 1, 0]), 5).float()
    multi = labels.clone()
    multi[0, 4] = 1  # a two-label clip (AudioSet style)
    lam, partner, mixed = sample_mixup(6, 0.5, 10.0, generator=torch.Generator().manual_seed(2))
    assert mixed.any() and not mixed.all()
    out = mix_labels(labels, lam, partner)
    assert torch.allclose(out.sum(1), torch.ones(6))
    assert torch.equal(out[~mixed], labels[~mixed])
    expect = lam[:, None] * labels + (1 - lam[:, None]) * labels[partner]
    assert torch.allclose(out, expect)
    assert torch.all(mix_labels(multi, lam, partner) <= 2)
    with pytest.raises(FeatureError, match="one_hot"):
        mix_labels(torch.tensor([0, 1, 2, 3, 1, 0]), lam, partner)


def test_mix_fbanks() -> None:
    x = torch.randn(5, 7, 3)
    lam = torch.tensor([1.0, 0.3, 0.5, 1.0, 0.9])
    partner = torch.tensor([1, 0, 4, 2, 3])
    out = mix_fbanks(x, lam, partner)
    assert torch.equal(out[[0, 3]], x[[0, 3]])
    assert torch.allclose(out[1], 0.3 * x[1] + 0.7 * x[0])
    with pytest.raises(FeatureError, match="lam"):
        mix_fbanks(x, lam[:4], partner)


def test_mix_waves_lengths_dc_and_padding() -> None:
    g = torch.Generator().manual_seed(0)
    lengths = [4000, 1000, 2500, 300]
    wave = torch.zeros(4, 4000)
    for i, n in enumerate(lengths):
        w = torch.randn(n, generator=g) + 0.3  # an offset the mixture must lose
        wave[i, :n] = w - w.mean()
    nf = torch.tensor([frames_for(n) for n in lengths])
    lam = torch.tensor([1.0, 0.6, 0.7, 0.8])
    partner = torch.tensor([1, 2, 3, 1])
    out, frames = mix_waves(wave, nf, lam, partner)
    assert out.shape == wave.shape
    assert frames.tolist() == [nf[0], max(nf[1], nf[2]), max(nf[2], nf[3]), max(nf[3], nf[1])]
    assert torch.equal(out[0], wave[0])  # not mixed: untouched
    for i in (1, 2, 3):
        span = (int(frames[i]) - 1) * 160 + 400
        assert abs(out[i, :span].mean().item()) < 1e-6
        assert torch.all(out[i, span:] == 0)
        raw = lam[i] * wave[i] + (1 - lam[i]) * wave[partner[i]]
        centred = raw[:span] - raw[:span].mean()
        assert torch.allclose(out[i, :span], centred, atol=1e-6)
    with pytest.raises(FeatureError, match=r"\(batch, samples\)"):
        mix_waves(wave[0], nf, lam, partner)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_augmentations_run_on_cuda() -> None:
    x = features(8, 40, 16).cuda()
    g = torch.Generator().manual_seed(0)  # a CPU generator drives GPU tensors
    assert spec_augment(x, 8, 8).is_cuda
    assert noise_and_shift(x, generator=g).is_cuda
    lam, partner, _ = sample_mixup(8, 1.0, 10.0, generator=g, device="cuda")
    assert mix_fbanks(x, lam, partner).is_cuda
    out, frames = mix_waves(torch.randn(8, 2000, device="cuda"), torch.full((8,), 10, device="cuda"), lam, partner)
    assert out.is_cuda and frames.is_cuda
