"""Positional-embedding adaptation: centre crop at the authors' index, per-axis bilinear stretch, prefix handling."""
import numpy as np
import pytest
import torch

from ssast.models.posembed import WeightMismatchError, adapt_pos_embed, adapt_prefix

D = 3


def coded_pos(f: int, t: int, prefix: int) -> torch.Tensor:
    """(1, prefix + f*t, D): channel 0 = 100*f_row + t_col, channel 1 = a random value, channel 2 = -1 for prefix i."""
    grid = torch.zeros(f, t, D)
    grid[..., 0] = torch.arange(f)[:, None] * 100.0 + torch.arange(t)[None, :]
    grid[..., 1] = torch.randn(f, t)
    pre = torch.stack([torch.full((D,), -1.0 - i) for i in range(prefix)])
    return torch.cat([pre, grid.reshape(f * t, D)])[None]


def linear_resize(a: np.ndarray, axis: int, new: int) -> np.ndarray:
    """Reference 1-D linear interpolation with half-pixel centres (align_corners=False), edges clamped."""
    old = a.shape[axis]
    src = (np.arange(new) + 0.5) * old / new - 0.5
    src = np.clip(src, 0, None)
    lo = np.minimum(np.floor(src).astype(int), old - 1)
    hi = np.minimum(lo + 1, old - 1)
    w = src - lo
    a_lo, a_hi = np.take(a, lo, axis=axis), np.take(a, hi, axis=axis)
    shape = [1] * a.ndim
    shape[axis] = new
    return a_lo * (1 - w.reshape(shape)) + a_hi * w.reshape(shape)


def grid_of(pos: torch.Tensor, prefix: int, f: int, t: int) -> np.ndarray:
    return pos[0, prefix:].reshape(f, t, D).numpy()


def test_identity_when_grids_equal():
    pos = coded_pos(3, 5, 2)
    out = adapt_pos_embed(pos, (3, 5), (3, 5), 2, 2)
    assert torch.equal(out, pos)


@pytest.mark.parametrize(
    "old,new,start",
    [(6, 3, 2), (5, 2, 1), (7, 4, 1), (4, 1, 2), (8, 5, 2), (9, 4, 2)],
)
def test_crop_start_index_both_axes(old, new, start):
    # p//2 - n//2 differs from (p-n)//2 when p is even and n odd (6->3: 2 vs 1; 4->1: 2 vs 1; 8->5: 2 vs 1).
    pos = coded_pos(old, old, 1)
    out = adapt_pos_embed(pos, (old, old), (new, old), 1, 1)  # frequency only
    g = grid_of(out, 1, new, old)
    assert np.array_equal(g[:, 0, 0], (np.arange(new) + start) * 100.0)
    assert np.array_equal(g[0, :, 0], np.arange(old) + start * 100.0)  # time untouched
    out = adapt_pos_embed(pos, (old, old), (old, new), 1, 1)  # time only
    g = grid_of(out, 1, old, new)
    assert np.array_equal(g[0, :, 0], np.arange(new) + start)
    assert np.array_equal(g[:, 0, 0], np.arange(old) * 100.0 + start)


def test_interpolate_frequency_only_and_time_only():
    pos = coded_pos(3, 4, 2)
    ref = grid_of(pos, 2, 3, 4)
    out = adapt_pos_embed(pos, (3, 4), (7, 4), 2, 2)
    assert out.shape == (1, 2 + 28, D)
    np.testing.assert_allclose(grid_of(out, 2, 7, 4), linear_resize(ref, 0, 7), atol=1e-5)
    out = adapt_pos_embed(pos, (3, 4), (3, 9), 2, 2)
    np.testing.assert_allclose(grid_of(out, 2, 3, 9), linear_resize(ref, 1, 9), atol=1e-5)
    # Interpolation along time leaves each frequency row's values in that row (no mixing across rows).
    assert np.array_equal(np.floor(grid_of(out, 2, 3, 9)[:, :, 0] / 100), np.repeat(np.arange(3)[:, None], 9, 1))


def test_both_axes_crop_and_interpolate_compose():
    pos = coded_pos(6, 3, 2)
    ref = grid_of(pos, 2, 6, 3)
    out = adapt_pos_embed(pos, (6, 3), (3, 8), 2, 2)  # crop frequency (start 2), stretch time
    expected = linear_resize(ref[2:5], 1, 8)
    np.testing.assert_allclose(grid_of(out, 2, 3, 8), expected, atol=1e-5)
    out = adapt_pos_embed(pos, (6, 3), (10, 2), 2, 2)  # stretch frequency, crop time (3 -> 2 starts at 0)
    expected = linear_resize(ref, 0, 10)[:, 0:2]
    np.testing.assert_allclose(grid_of(out, 2, 10, 2), expected, atol=1e-5)


@pytest.mark.parametrize("p_old,p_new", [(1, 1), (2, 2), (2, 1), (1, 2)])
def test_prefix_counts(p_old, p_new):
    pos = coded_pos(2, 3, p_old)
    out = adapt_pos_embed(pos, (2, 3), (2, 3), p_old, p_new)
    assert out.shape == (1, p_new + 6, D)
    assert torch.equal(out[0, p_new:], pos[0, p_old:])
    assert torch.equal(out[0, 0], pos[0, 0])  # cls kept first
    if p_new == 2:
        assert torch.equal(out[0, 1], pos[0, 1] if p_old == 2 else pos[0, 0])  # dist kept or duplicated


def test_adapt_prefix_tokens():
    tok = torch.randn(1, 2, 4)
    assert torch.equal(adapt_prefix(tok, 1), tok[:, :1])
    one = tok[:, :1]
    assert torch.equal(adapt_prefix(one, 2), torch.cat([one, one], 1))


def test_wrong_length_is_a_clear_error():
    pos = coded_pos(2, 3, 2)
    with pytest.raises(WeightMismatchError, match="8 positions"):
        adapt_pos_embed(pos, (3, 3), (2, 2), 2, 2)


def test_dtype_preserved():
    pos = coded_pos(4, 4, 2).to(torch.bfloat16)
    out = adapt_pos_embed(pos, (4, 4), (6, 2), 2, 2)
    assert out.dtype == torch.bfloat16 and out.shape == (1, 14, D)
