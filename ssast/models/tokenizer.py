"""Spectrogram tokens: grid arithmetic, the patch (or frame) embedding, and raw patches for the pretraining targets.

The model input is a filter bank of shape (batch, time, freq); it is viewed as a one-channel image
(batch, 1, freq, time). Tokens are ordered frequency-major: index = f_row * t_cols + t_col, and a raw patch is
flattened (freq, time) inside the patch, like an unfold of that image.
"""
from __future__ import annotations

import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn


class InputShapeError(ValueError):
    """The input spectrogram does not fit the model (wrong number of mel bins, too long, or smaller than a patch)."""


def grid_shape(
    input_fdim: int, input_tdim: int, fshape: int, tshape: int, fstride: int, tstride: int
) -> tuple[int, int]:
    """Token grid (f_rows, t_cols) of a conv with kernel (fshape, tshape) and stride (fstride, tstride), no padding."""
    if fstride < 1 or tstride < 1:
        raise ValueError(f"patch strides must be positive, got fstride={fstride}, tstride={tstride}")
    if input_fdim < fshape or input_tdim < tshape:
        raise InputShapeError(
            f"input of {input_fdim} mel bins x {input_tdim} frames is smaller than one {fshape}x{tshape} patch; "
            "use a longer target_length or a smaller patch"
        )
    return (input_fdim - fshape) // fstride + 1, (input_tdim - tshape) // tstride + 1


class PatchEmbed(nn.Module):
    """Linear projection of (possibly overlapping) spectrogram patches: a one-channel conv with kernel = patch shape."""

    def __init__(self, fshape: int, tshape: int, fstride: int, tstride: int, dim: int) -> None:
        super().__init__()
        self.fshape, self.tshape, self.fstride, self.tstride = fshape, tshape, fstride, tstride
        self.proj = nn.Conv2d(1, dim, kernel_size=(fshape, tshape), stride=(fstride, tstride))

    def grid_for(self, input_fdim: int, input_tdim: int) -> tuple[int, int]:
        """Token grid (f_rows, t_cols) this embedding gives for an input of that size."""
        return grid_shape(input_fdim, input_tdim, self.fshape, self.tshape, self.fstride, self.tstride)

    def forward(self, x: Tensor) -> Tensor:
        """(B, T, F) filter bank -> (B, N, D) tokens in frequency-major order.

        Computed as patches @ kernel (the same numbers as the conv, same weights) because oneDNN's bf16 convolution
        with tall kernels is pathological on CPU: a 128x2 frame projection took 4.5 s forward+backward at Base size
        against 4 ms as a matrix product (benchmarks/README.md).
        """
        self.grid_for(x.shape[2], x.shape[1])  # clear error for inputs smaller than a patch
        weight = self.proj.weight.flatten(1)  # (D, fshape * tshape), (freq, time) order inside the patch
        if (self.fstride, self.tstride) == (self.fshape, self.tshape):
            patches = patchify(x, self.fshape, self.tshape)  # a view-and-permute, no copy of overlapping windows
        else:
            cols = F.unfold(x.transpose(1, 2).unsqueeze(1), (self.fshape, self.tshape), stride=(self.fstride, self.tstride))
            patches = cols.transpose(1, 2)  # (B, N, fshape * tshape), positions in frequency-major order
        return F.linear(patches, weight, self.proj.bias)


def patchify(x: Tensor, fshape: int, tshape: int) -> Tensor:
    """(B, T, F) -> (B, N, fshape * tshape) non-overlapping raw patches (the pretraining targets), frequency-major.

    Frames or bins that do not fill a whole patch at the end of an axis are dropped, as the conv drops them.
    """
    f_rows, t_cols = grid_shape(x.shape[2], x.shape[1], fshape, tshape, fshape, tshape)
    x = x[:, : t_cols * tshape, : f_rows * fshape]
    return rearrange(x, "b (tc pt) (fr pf) -> b (fr tc) (pf pt)", pt=tshape, pf=fshape)


def unpatchify(patches: Tensor, fshape: int, tshape: int, input_fdim: int, input_tdim: int) -> Tensor:
    """Inverse of :func:`patchify`: (B, N, fshape * tshape) -> (B, T, F); the uncovered tail is zero."""
    f_rows, t_cols = grid_shape(input_fdim, input_tdim, fshape, tshape, fshape, tshape)
    if patches.shape[1] != f_rows * t_cols or patches.shape[2] != fshape * tshape:
        raise InputShapeError(
            f"patches of shape {tuple(patches.shape)} do not match a {f_rows}x{t_cols} grid of "
            f"{fshape}x{tshape} patches ({input_fdim}x{input_tdim} input)"
        )
    x = rearrange(patches, "b (fr tc) (pf pt) -> b (tc pt) (fr pf)", fr=f_rows, tc=t_cols, pf=fshape, pt=tshape)
    out = x.new_zeros(patches.shape[0], input_tdim, input_fdim)
    out[:, : t_cols * tshape, : f_rows * fshape] = x
    return out
