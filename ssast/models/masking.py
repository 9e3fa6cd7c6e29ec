"""Token masks for masked spectrogram patch modeling, vectorised over the batch and reproducible from a Generator.

Every sampler returns a boolean mask (batch, tokens) with exactly ``num_mask`` True per clip, tokens in
frequency-major order (index = f_row * t_cols + t_col). Nothing here loops over clips or reads values back to
the host, so sampling can run inside a compiled or GPU training step.

Frame models use :func:`random_mask` (uniform over tokens). Patch models use :func:`cluster_mask`: per clip a
square size c is drawn uniformly from ``cluster_sizes``; squares of c x c neighbouring patches are placed at random
until at least ``num_mask`` tokens are covered, and the last square's new tokens are trimmed at random so exactly
``num_mask`` remain. The placement is computed in one shot: a fixed, generous number of squares is drawn in order,
each token is scored by the first square that covers it (plus a uniform tie-break), and the ``num_mask``
best-scored tokens are masked; that is the same distribution as placing squares one at a time. If the drawn
squares cover fewer than ``num_mask`` tokens (rare by construction; possible when num_mask is close to N), the rest
is filled uniformly at random among the uncovered tokens.

How this differs from the authors' sampler; the distributions are not identical:
- a square is centred on a uniformly drawn token (for even c the extra cell falls before or after the centre at
  random) and clipped at the grid border; it never wraps from the end of one frequency row into the next, as the
  authors' flat index arithmetic does;
- every token can be masked, including token 0 and the last token, which the authors' sampler never masks;
- coverage is symmetric in frequency and in time: border rows and columns are masked less often than interior ones
  because fewer square positions cover them (at 400 of 8 x 64 tokens about 0.67 vs 0.83 for the outer vs middle
  rows), whereas in the authors' sampler it is the lowest frequency row alone that is masked about half as often;
- with f_rows = 1 (frame-like grids) squares degenerate to runs of c consecutive tokens.

:func:`inverse_block_mask` is EAT's inverse block masking (Chen et al., 2024): squares (patch grids) or spans in
time (frame grids, f_rows = 1) are chosen to stay VISIBLE and everything else is masked, so that at a high mask
ratio what the encoder sees is still a few contiguous regions rather than scattered tokens. It is the complement of
:func:`cluster_mask` with ``N - num_mask`` tokens, so it inherits that sampler's placement and exact count.

:func:`cluster_mask` with ``sampler="authors"`` (``model.mask_sampler: authors``) reproduces the authors' sampler
with its quirks, for comparison: a square is anchored at its top-left token ``s`` and covers ``s + t_cols * i + j`` for i, j < c in flat
index arithmetic (so it wraps from the end of one row into the next and is cut at the last token); token 0 is never
taken; squares are added until MORE than ``num_mask`` tokens are covered, and the trim keeps the ``num_mask`` lowest
indices (``list(set(ids))[:num_mask]`` on small ints), so the highest covered token, the last token included, is
always dropped.
"""
from __future__ import annotations

import math
from typing import Optional, Sequence

import torch
from torch import Tensor

__all__ = ["num_masked", "random_mask", "cluster_mask", "inverse_block_mask", "sample_mask", "cluster_square_budget",
           "MASK_MODES"]

MASK_MODES = ("cluster", "authors_cluster", "random", "inverse_block")

_CHUNK = 64  # squares scored per round: bounds memory to batch * 64 * N booleans


def _device_of(generator: Optional[torch.Generator], device: Optional[torch.device | str]) -> torch.device:
    """Where to sample: the generator's device when one is given (its state lives there), else ``device``."""
    if generator is not None:
        return generator.device
    return torch.device(device) if device is not None else torch.device("cpu")


def _check(num_tokens: int, num_mask: int) -> None:
    if not 0 < num_mask <= num_tokens:
        raise ValueError(f"cannot mask {num_mask} of {num_tokens} tokens: need 1 <= num_mask <= {num_tokens}")


def num_masked(mask_patch: float, num_tokens: int) -> int:
    """Masked tokens per clip from model.mask_patch: a count when >= 1, else a fraction of ``num_tokens``."""
    if mask_patch >= 1:
        if float(mask_patch) != int(mask_patch):
            raise ValueError(f"model.mask_patch={mask_patch}: a count must be a whole number (or a fraction < 1)")
        count = int(mask_patch)
    else:
        count = round(mask_patch * num_tokens)
    if count < 1:
        raise ValueError(
            f"model.mask_patch={mask_patch} masks no token of {num_tokens}; use a count >= 1 or a larger fraction"
        )
    if count > num_tokens:
        raise ValueError(
            f"model.mask_patch={mask_patch} asks for {count} masked tokens but a clip has only {num_tokens}; "
            "lower model.mask_patch or use a fraction"
        )
    return count


def _top_k_mask(scores: Tensor, num_mask: int) -> Tensor:
    """Boolean mask of the ``num_mask`` lowest scores per row."""
    idx = torch.argsort(scores, dim=1)[:, :num_mask]
    mask = torch.zeros(scores.shape, dtype=torch.bool, device=scores.device)
    return mask.scatter_(1, idx, True)


def random_mask(
    batch: int,
    num_tokens: int,
    num_mask: int,
    generator: Optional[torch.Generator] = None,
    device: Optional[torch.device | str] = None,
) -> Tensor:
    """(B, N) mask with ``num_mask`` tokens per clip chosen uniformly at random (argsort of uniform noise)."""
    _check(num_tokens, num_mask)
    noise = torch.rand(batch, num_tokens, generator=generator, device=_device_of(generator, device))
    return _top_k_mask(noise, num_mask)


def cluster_square_budget(f_rows: int, t_cols: int, num_mask: int, smallest: int) -> int:
    """How many squares to draw so that they cover ``num_mask`` tokens with high probability.

    An interior token is covered by one square of side c with probability p = min(c, f)*min(c, t) / N; after S
    squares it stays uncovered with probability (1 - p)^S. S is chosen so that this is at most half the fraction
    of tokens allowed to stay unmasked (or 1/(2N) when every token is masked), doubled as a margin for the border.
    """
    n = f_rows * t_cols
    p = min(smallest, f_rows) * min(smallest, t_cols) / n
    if p >= 1:
        return 1
    target = max((n - num_mask) / (2 * n), 0.5 / n)
    return max(1, math.ceil(2.0 * math.log(target) / math.log1p(-p)))


def cluster_mask(
    batch: int,
    f_rows: int,
    t_cols: int,
    num_mask: int,
    cluster_sizes: Sequence[int] = (3, 4, 5),
    generator: Optional[torch.Generator] = None,
    device: Optional[torch.device | str] = None,
    sampler: str = "ours",
) -> Tensor:
    """(B, f_rows * t_cols) mask made of c x c squares of neighbouring tokens, exactly ``num_mask`` per clip;
    ``sampler="authors"`` places them as the authors' sampler does (see the module docstring)."""
    n = f_rows * t_cols
    _check(n, num_mask)
    if sampler == "authors" and num_mask > n - 2:  # their loop needs num_mask + 1 coverable tokens, token 0 is never
        raise ValueError(f"the authors' sampler cannot mask {num_mask} of {n} tokens: at most {n - 2}")
    sizes = [int(c) for c in cluster_sizes]
    if not sizes or min(sizes) < 1:
        raise ValueError(f"cluster_sizes must be positive square sides, got {list(cluster_sizes)}")
    dev = _device_of(generator, device)
    num_squares = cluster_square_budget(f_rows, t_cols, num_mask, min(sizes))

    # Square side per clip, built arithmetically (no host-to-device copy of the size list).
    choice = torch.randint(len(sizes), (batch, 1), generator=generator, device=dev)
    side = torch.zeros(batch, 1, dtype=torch.long, device=dev)
    for i, c in enumerate(sizes):
        side = side + (choice == i).long() * c
    if sampler == "authors":
        # anchored squares cover border tokens less often than centred ones: twice the budget as a margin
        return _authors_squares(side, max(sizes), f_rows, t_cols, num_mask, 2 * num_squares, generator)

    rows = torch.arange(f_rows, device=dev)
    cols = torch.arange(t_cols, device=dev)
    first_cover = torch.full((batch, n), num_squares, dtype=torch.long, device=dev)
    for start in range(0, num_squares, _CHUNK):
        k = min(_CHUNK, num_squares - start)
        centre = torch.randint(n, (batch, k), generator=generator, device=dev)
        # Cells before the centre: (c-1)//2, or for even c one more half of the time, so coverage is symmetric.
        coin = torch.randint(2, (2, batch, k), generator=generator, device=dev)
        r0 = (centre // t_cols) - (side - 1 + coin[0]) // 2  # top-left corner, may lie outside (clipped below)
        c0 = (centre % t_cols) - (side - 1 + coin[1]) // 2
        in_rows = (rows >= r0[..., None]) & (rows < (r0 + side)[..., None])  # (B, k, f_rows)
        in_cols = (cols >= c0[..., None]) & (cols < (c0 + side)[..., None])  # (B, k, t_cols)
        covered = (in_rows[..., :, None] & in_cols[..., None, :]).reshape(batch, k, n)
        order = torch.arange(start, start + k, device=dev).view(1, k, 1)
        first = torch.where(covered, order, num_squares).amin(dim=1)
        first_cover = torch.minimum(first_cover, first)

    # Earlier squares rank first; the tie-break trims the last square (and fills, if ever needed) at random.
    scores = first_cover.to(torch.float32) + torch.rand(batch, n, generator=generator, device=dev)
    return _top_k_mask(scores, num_mask)


def inverse_block_mask(
    batch: int,
    f_rows: int,
    t_cols: int,
    num_mask: int,
    block_sizes: Sequence[int] = (5,),
    generator: Optional[torch.Generator] = None,
    device: Optional[torch.device | str] = None,
) -> Tensor:
    """(B, f_rows * t_cols) mask, exactly ``num_mask`` per clip, whose VISIBLE tokens are c x c squares (c drawn per
    clip from ``block_sizes``; spans of c frames when f_rows = 1), the last square trimmed to the exact count."""
    n = f_rows * t_cols
    _check(n, num_mask)
    if num_mask == n:  # nothing stays visible: no block to place
        return torch.ones(batch, n, dtype=torch.bool, device=_device_of(generator, device))
    return ~cluster_mask(batch, f_rows, t_cols, n - num_mask, block_sizes, generator, device)


def _authors_squares(side: Tensor, c_max: int, f_rows: int, t_cols: int, num_mask: int, num_squares: int,
                     generator: Optional[torch.Generator]) -> Tensor:
    """The authors' placement, vectorised: ``num_squares`` anchors are drawn, each token is scored by the first
    anchor whose square covers it; the authors stop after the first square that brings the union above ``num_mask``
    (the (num_mask+1)-th smallest score) and keep the lowest ``num_mask`` indices of that union (a cumulative sum).
    If the budget falls short (not seen at 400 of 512), the union is the covered tokens plus the lowest uncovered."""
    batch, n, dev = side.shape[0], f_rows * t_cols, side.device
    # Each anchor's square as flat offsets t_cols * i + j (i, j < largest side); cells outside this clip's side, or
    # past the last token, go to a spare column n that is dropped. One scatter of "first square" per covered token.
    row, col = (g.reshape(-1) for g in torch.meshgrid(torch.arange(c_max, device=dev),
                                                      torch.arange(c_max, device=dev), indexing="ij"))
    anchor = torch.randint(n, (batch, num_squares, 1), generator=generator, device=dev)
    cells = anchor + t_cols * row + col  # (B, S, c_max^2)
    keep = ((row < side) & (col < side)).unsqueeze(1) & (cells < n)
    cells = torch.where(keep, cells, n).reshape(batch, -1)
    order = torch.arange(num_squares, device=dev).view(1, -1, 1).expand(batch, -1, c_max * c_max).reshape(batch, -1)
    first_cover = torch.full((batch, n + 1), num_squares, dtype=torch.long, device=dev)
    first_cover = first_cover.scatter_reduce(1, cells, order, reduce="amin")[:, :n]
    first_cover[:, 0] = num_squares + 1  # their `mask_cand > 0`
    last = first_cover.sort(dim=1).values[:, num_mask : num_mask + 1]  # the square that passes num_mask
    union = first_cover <= last
    return union & (union.long().cumsum(dim=1) <= num_mask)


def sample_mask(
    mode: str,
    batch: int,
    grid: tuple[int, int],
    num_mask: int,
    cluster_sizes: Sequence[int] = (3, 4, 5),
    generator: Optional[torch.Generator] = None,
    device: Optional[torch.device | str] = None,
) -> Tensor:
    """Dispatch on ``mode`` over a (f_rows, t_cols) grid: "cluster" squares masked, the authors' cluster sampler
    ("authors_cluster"), "random" tokens, or "inverse_block" squares/spans kept visible; ``cluster_sizes`` are the
    square sides of the block modes."""
    f_rows, t_cols = grid
    if mode == "authors_cluster":
        return cluster_mask(batch, f_rows, t_cols, num_mask, cluster_sizes, generator, device, sampler="authors")
    if mode == "cluster":
        return cluster_mask(batch, f_rows, t_cols, num_mask, cluster_sizes, generator, device)
    if mode == "random":
        return random_mask(batch, f_rows * t_cols, num_mask, generator, device)
    if mode == "inverse_block":
        return inverse_block_mask(batch, f_rows, t_cols, num_mask, cluster_sizes, generator, device)
    raise ValueError(f"unknown mask mode {mode!r}: use one of {', '.join(MASK_MODES)}")
