"""The spectrogram ViT encoder (DeiT layout): patch embedding, prefix tokens, learned positions, timm blocks.

Blocks are timm's ``Block`` with :class:`ssast.models.attention.Attention`: PyTorch's scaled_dot_product_attention
(flash attention on a GPU), with a faster backward on the CPU; parameter names are timm's. The encoder accepts any
input with the built number of mel bins and at most the built number of frames; a shorter input uses the positional
embeddings of the first time columns of every frequency row.
"""
from __future__ import annotations

from functools import partial
from typing import Optional

import torch
import torch.utils.checkpoint
from timm.layers import trunc_normal_
from timm.models.vision_transformer import Block
from torch import Tensor, nn

from ssast.config import MODEL_SIZES, ModelConfig
from ssast.models.attention import Attention
from ssast.models.tokenizer import InputShapeError, PatchEmbed, grid_shape

__all__ = ["MODEL_SIZES", "ViTEncoder", "build_encoder", "init_vit_weights", "select_positions"]


def init_vit_weights(module: nn.Module) -> None:
    """timm-style init: truncated normal (std .02) for Linear weights with zero bias, unit/zero LayerNorm."""
    if isinstance(module, nn.Linear):
        trunc_normal_(module.weight, std=0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.LayerNorm):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)


def select_positions(
    pos_embed: Tensor, num_prefix: int, built_grid: tuple[int, int], grid: tuple[int, int]
) -> Tensor:
    """Positional embeddings (1, P + f*t, D) of the first f rows and t columns of the built 2-D grid, prefix kept."""
    if tuple(grid) == tuple(built_grid):
        return pos_embed
    (f0, t0), (f, t) = built_grid, grid
    if f > f0 or t > t0:
        raise InputShapeError(
            f"input gives a {f}x{t} token grid, larger than the {f0}x{t0} grid the model was built for; "
            "crop the input or rebuild the model with a larger input size"
        )
    dim = pos_embed.shape[-1]
    patch_pos = pos_embed[:, num_prefix:].reshape(1, f0, t0, dim)[:, :f, :t].reshape(1, f * t, dim)
    return torch.cat([pos_embed[:, :num_prefix], patch_pos], dim=1)


def make_blocks(
    dim: int, depth: int, heads: int, mlp_ratio: float = 4.0, drop_path: float = 0.0, norm_eps: float = 1e-6
) -> nn.ModuleList:
    """``depth`` pre-norm timm blocks (qkv bias, GELU, LayerNorm eps norm_eps), stochastic depth rising to drop_path."""
    dpr = torch.linspace(0, drop_path, depth).tolist() if depth > 0 else []
    norm = partial(nn.LayerNorm, eps=norm_eps)
    return nn.ModuleList(
        Block(dim, heads, mlp_ratio, qkv_bias=True, drop_path=dpr[i], norm_layer=norm, attn_layer=Attention)
        for i in range(depth)
    )


class ViTEncoder(nn.Module):
    """Patch embedding + prefix (cls, dist) tokens + learned positional embedding + transformer blocks + norm."""

    def __init__(
        self,
        dim: int,
        depth: int,
        heads: int,
        fshape: int,
        tshape: int,
        fstride: int,
        tstride: int,
        input_fdim: int,
        input_tdim: int,
        num_prefix: int = 2,
        mlp_ratio: float = 4.0,
        drop_path: float = 0.0,
        grad_checkpointing: bool = False,
        norm_eps: float = 1e-6,
    ) -> None:
        super().__init__()
        if dim % heads:
            raise ValueError(f"dim={dim} is not divisible by heads={heads}")
        if num_prefix < 1:
            raise ValueError(f"num_prefix must be at least 1, got {num_prefix}")
        self.dim, self.depth, self.heads, self.num_prefix = dim, depth, heads, num_prefix
        self.input_fdim, self.input_tdim = input_fdim, input_tdim
        self.grad_checkpointing = grad_checkpointing
        self.patch_embed = PatchEmbed(fshape, tshape, fstride, tstride, dim)
        self.grid = grid_shape(input_fdim, input_tdim, fshape, tshape, fstride, tstride)
        self.num_patches = self.grid[0] * self.grid[1]
        self.prefix_tokens = nn.Parameter(torch.zeros(1, num_prefix, dim))  # index 0 = cls, 1 = dist
        self.pos_embed = nn.Parameter(torch.zeros(1, num_prefix + self.num_patches, dim))
        self.blocks = make_blocks(dim, depth, heads, mlp_ratio, drop_path, norm_eps)
        self.norm = nn.LayerNorm(dim, eps=norm_eps)
        trunc_normal_(self.pos_embed, std=0.02)
        trunc_normal_(self.prefix_tokens, std=0.02)
        self.apply(init_vit_weights)

    def grid_for(self, x: Tensor) -> tuple[int, int]:
        """Token grid of a (B, T, F) input; checks the mel bins and the length against the built size."""
        if x.dim() != 3:
            raise InputShapeError(f"expected a (batch, time, freq) filter bank, got shape {tuple(x.shape)}")
        frames, bins = x.shape[1], x.shape[2]
        if bins != self.input_fdim:
            raise InputShapeError(
                f"input has {bins} mel bins but the model was built for {self.input_fdim}; "
                "set audio.num_mel_bins to match model.input_fdim"
            )
        if frames > self.input_tdim:
            raise InputShapeError(
                f"input has {frames} frames but the model was built for at most {self.input_tdim}; "
                "crop the input (audio.target_length) or build the model with a larger model.input_tdim"
            )
        return self.patch_embed.grid_for(bins, frames)

    def position_embedding(self, grid: Optional[tuple[int, int]] = None) -> Tensor:
        """(1, P + f*t, D) positional embeddings for a token grid (default: the built grid)."""
        return select_positions(self.pos_embed, self.num_prefix, self.grid, grid or self.grid)

    def embed_patches(self, x: Tensor) -> Tensor:
        """(B, T, F) -> (B, N, D): the patch projection only (no prefix, no positions)."""
        self.grid_for(x)
        return self.patch_embed(x)

    def add_positions(self, tokens: Tensor, grid: Optional[tuple[int, int]] = None) -> Tensor:
        """(B, N, D) -> (B, P + N, D): prepend the prefix tokens and add the positional embedding.

        ``grid`` is the (f_rows, t_cols) of the tokens; when omitted it is inferred with the built number of
        frequency rows (inputs are only ever shorter in time).
        """
        n = tokens.shape[1]
        if grid is None:
            f_rows = self.grid[0]
            if n % f_rows:
                raise InputShapeError(
                    f"{n} tokens do not fill whole rows of {f_rows} frequency rows; pass the token grid"
                )
            grid = (f_rows, n // f_rows)
        if grid[0] * grid[1] != n:
            raise InputShapeError(f"{n} tokens do not match a {grid[0]}x{grid[1]} token grid")
        prefix = self.prefix_tokens.expand(tokens.shape[0], -1, -1).to(tokens.dtype)
        return torch.cat([prefix, tokens], dim=1) + self.position_embedding(tuple(grid))

    def run_blocks(self, x: Tensor, intermediates: Optional[list[Tensor]] = None) -> Tensor:
        """(B, L, D) -> (B, L, D): the transformer blocks (checkpointed when asked, in training) and the final norm.

        With a list ``intermediates``, every block's output (before the final norm) is appended to it.
        """
        for blk in self.blocks:
            if self.grad_checkpointing and self.training and torch.is_grad_enabled():
                x = torch.utils.checkpoint.checkpoint(blk, x, use_reentrant=False)
            else:
                x = blk(x)
            if intermediates is not None:
                intermediates.append(x)
        return self.norm(x)

    def forward(self, x: Tensor) -> Tensor:
        """(B, T, F) filter bank -> (B, P + N, D) normalised token outputs, prefix first."""
        grid = self.grid_for(x)
        return self.run_blocks(self.add_positions(self.patch_embed(x), grid))

    def forward_intermediates(self, x: Tensor) -> tuple[Tensor, list[Tensor]]:
        """(B, T, F) -> (the forward output, [every block's (B, P + N, D) output before the final norm, first to last]).

        The block outputs are the hidden states SUPERB combines (the authors' upstream returns these 12, without the
        patch embedding and without the final norm); in timm's spirit, though simpler than its ``forward_intermediates``.
        """
        grid = self.grid_for(x)
        layers: list[Tensor] = []
        out = self.run_blocks(self.add_positions(self.patch_embed(x), grid), layers)
        return out, layers


def set_grad_checkpointing(model: nn.Module, enable: bool = True) -> nn.Module:
    """Turn activation checkpointing of the encoder blocks on (or off) in every encoder inside ``model``."""
    for m in model.modules():
        if isinstance(m, ViTEncoder):
            m.grad_checkpointing = enable
    return model


def build_encoder(cfg: ModelConfig) -> ViTEncoder:
    """The encoder a model config describes (the config's fields of the same names)."""
    fields = ("dim", "depth", "heads", "fshape", "tshape", "fstride", "tstride", "input_fdim", "input_tdim",
              "num_prefix", "mlp_ratio", "drop_path", "grad_checkpointing", "norm_eps")
    return ViTEncoder(**{f: getattr(cfg, f) for f in fields})
