"""Positional-embedding adaptation between token grids (pretraining -> fine-tuning, ImageNet -> audio).

The grid part of a learned positional embedding is viewed as a (D, F, T) image and each axis is adapted on its own,
time first, then frequency, in the order of the SSAST/AST authors' code (the axes are independent, so the order only
matters to float rounding):

- a smaller axis is centre-cropped, starting at ``old // 2 - new // 2`` (the authors' index; it differs from
  ``(old - new) // 2`` when old and new have different parities, and matching it matters for imported weights);
- a larger axis is stretched by bilinear interpolation of that axis only (``align_corners=False``, no antialiasing),
  which on the other, unchanged axis is the identity.

Prefix (cls/dist) embeddings are kept. Going from two prefix tokens to one keeps the first (the cls token, which is
what a one-prefix DeiT or ViT has); going from one to two duplicates it, so both prefix outputs start identical.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from einops import rearrange


class WeightMismatchError(ValueError):
    """Weights that do not fit the model they are loaded into; the message says which tensor and why."""


def adapt_prefix(prefix: torch.Tensor, num_new: int) -> torch.Tensor:
    """Adapt (1, P, D) prefix tokens or embeddings to ``num_new`` entries: keep the first ones or duplicate the last."""
    num_old = prefix.shape[1]
    if num_new < 1 or num_old < 1:
        raise WeightMismatchError(f"prefix token counts must be >= 1, got {num_old} -> {num_new}")
    if num_new <= num_old:
        return prefix[:, :num_new]
    # Missing prefix entries start as copies of the last existing one (cls -> dist for 1 -> 2).
    extra = prefix[:, -1:].expand(-1, num_new - num_old, -1)
    return torch.cat([prefix, extra], dim=1)


def _adapt_axis(grid: torch.Tensor, axis: int, new: int) -> torch.Tensor:
    """Centre-crop (authors' start index) or bilinearly stretch one axis (2 = freq, 3 = time) of (1, D, F, T)."""
    old = grid.shape[axis]
    if new == old:
        return grid
    if new < old:
        start = old // 2 - new // 2
        return grid.narrow(axis, start, new)
    size = list(grid.shape[2:])
    size[axis - 2] = new
    return F.interpolate(grid, size=tuple(size), mode="bilinear", align_corners=False, antialias=False)


def adapt_pos_embed(
    pos_embed: torch.Tensor,
    old_grid: tuple[int, int],
    new_grid: tuple[int, int],
    num_prefix_old: int,
    num_prefix_new: int,
) -> torch.Tensor:
    """Adapt a (1, P_old + Fo*To, D) positional embedding to (1, P_new + Fn*Tn, D): crop/interpolate per axis."""
    fo, to = (int(v) for v in old_grid)
    fn, tn = (int(v) for v in new_grid)
    if pos_embed.dim() != 3 or pos_embed.shape[0] != 1:
        raise WeightMismatchError(f"pos_embed must have shape (1, L, D), got {tuple(pos_embed.shape)}")
    expected = num_prefix_old + fo * to
    if pos_embed.shape[1] != expected:
        raise WeightMismatchError(
            f"pos_embed has {pos_embed.shape[1]} positions but {num_prefix_old} prefix + a {fo}x{to} grid "
            f"needs {expected}: the source model's input size, patch shape or stride is not what was assumed"
        )
    if min(fn, tn) < 1:
        raise WeightMismatchError(f"target grid must be at least 1x1, got {fn}x{tn}")
    prefix = adapt_prefix(pos_embed[:, :num_prefix_old], num_prefix_new)
    dtype = pos_embed.dtype
    # Interpolate in fp32 so half-precision weights do not lose accuracy in the resampling.
    grid = rearrange(pos_embed[:, num_prefix_old:].float(), "b (f t) d -> b d f t", f=fo, t=to)
    grid = _adapt_axis(grid, 3, tn)  # time first, in the authors' order
    grid = _adapt_axis(grid, 2, fn)
    grid = rearrange(grid, "b d f t -> b (f t) d").to(dtype)
    return torch.cat([prefix, grid], dim=1).contiguous()
