"""The SSAST pretraining model: masked spectrogram patch modeling with a discriminative and a generative head.

Two paths share the encoder, heads and objectives (``ModelConfig.pretrain_encoder``):

- ``all`` (SSAST): masked tokens are replaced by a learned mask embedding after the patch projection and before the
  positional embedding, and every token goes through the encoder. ``two_pass`` reproduces the authors' two encoder
  passes with independent masks, one per objective; by default both heads read one pass over one mask.
- ``visible`` (MAE-AST style): positions are added to every patch token, only the unmasked tokens (and the prefix)
  go through the encoder, and a shallow decoder sees the encoder outputs scattered back to their grid positions
  with a learned mask token at every masked position; the heads read the decoder outputs at the masked positions.

The forward pass samples its own mask (vectorised, no host synchronisation, no per-clip loop) unless one is given.
With ``masks_per_clip`` K > 1 every clip is masked K times independently: the K copies of a clip follow each other
in the batch (clip-major, as ``repeat_interleave``) and go through the encoder together, so one decoded and
featurised clip trains K masked predictions (EAT's ``clone_batch``).
"""
from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Optional

import torch
from torch import Tensor, nn

from ssast.config import ModelConfig
from ssast.models.encoder import ViTEncoder, build_encoder, init_vit_weights, make_blocks, select_positions
from ssast.models.masking import num_masked, sample_mask
from ssast.models.objectives import info_nce, masked_mse
from ssast.models.tokenizer import InputShapeError, patchify, unpatchify

__all__ = ["PretrainOutput", "PretrainDecoder", "SSASTPretrainModel", "build_pretrain_model"]


@dataclass
class PretrainOutput:
    """What one pretraining forward pass gives the engine and the visualisations.

    ``mask`` is the mask of the (InfoNCE) pass; in two-pass mode ``mse_mask`` is the MSE pass's own mask.
    Predictions are for the masked tokens of each clip, in increasing token order. With K masks per clip, masks and
    predictions have K x batch rows (the copies of clip i are rows i*K .. i*K + K - 1).
    """

    loss: Tensor
    nce: Tensor
    mse: Tensor
    accuracy: Tensor
    mask: Tensor
    mse_pred: Optional[Tensor] = None
    nce_pred: Optional[Tensor] = None
    mse_mask: Optional[Tensor] = None

    def scalars(self) -> dict[str, Tensor]:
        """Detached 0-dim tensors for logging (loss, nce, mse, accuracy); no host transfer here."""
        return {f.name: getattr(self, f.name).detach() for f in fields(self)[:4]}


def _head(dim: int, patch_dim: int) -> nn.Sequential:
    """Linear(D, D), ReLU, Linear(D, patch_dim): the shape of both SSAST prediction heads."""
    return nn.Sequential(nn.Linear(dim, dim), nn.ReLU(), nn.Linear(dim, patch_dim))


def _gather(x: Tensor, idx: Tensor) -> Tensor:
    """Rows ``idx`` (B, K) of every clip of x (B, N, D) -> (B, K, D)."""
    return torch.gather(x, 1, idx.unsqueeze(-1).expand(-1, -1, x.shape[-1]))


def split_indices(mask: Tensor, num_mask: int) -> tuple[Tensor, Tensor]:
    """(visible, masked) token indices, each in increasing order, for a mask with ``num_mask`` True per row."""
    order = torch.argsort(mask.to(torch.int8), dim=1, stable=True)  # False (visible) first, order kept
    n = mask.shape[1]
    return order[:, : n - num_mask], order[:, n - num_mask :]


class PretrainDecoder(nn.Module):
    """The shallow decoder of the visible-token path: encoder outputs + mask tokens at their grid positions."""

    def __init__(
        self,
        enc_dim: int,
        dim: int,
        depth: int,
        heads: int,
        num_prefix: int,
        grid: tuple[int, int],
        mlp_ratio: float = 4.0,
    ) -> None:
        super().__init__()
        if dim % heads:
            raise ValueError(f"model.decoder_dim={dim} is not divisible by model.decoder_heads={heads}")
        self.num_prefix, self.grid, self.dim = num_prefix, tuple(grid), dim
        self.embed = nn.Linear(enc_dim, dim) if dim != enc_dim else nn.Identity()
        self.mask_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, num_prefix + grid[0] * grid[1], dim))
        self.blocks = make_blocks(dim, depth, heads, mlp_ratio)
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        nn.init.normal_(self.mask_token, std=0.02)
        self.apply(init_vit_weights)

    def forward(self, enc_out: Tensor, visible_idx: Tensor, mask: Tensor, grid: tuple[int, int]) -> Tensor:
        """(B, P + V, De) encoder outputs -> (B, P + N, Dd) decoder outputs over the full grid, prefix first."""
        x = self.embed(enc_out)
        p = self.num_prefix
        batch, n = mask.shape
        full = self.mask_token.to(x.dtype).expand(batch, n, -1)
        full = torch.scatter(full, 1, visible_idx.unsqueeze(-1).expand(-1, -1, x.shape[-1]), x[:, p:])
        x = torch.cat([x[:, :p], full], dim=1) + select_positions(self.pos_embed, p, self.grid, grid)
        for blk in self.blocks:
            x = blk(x)
        return self.norm(x)


class SSASTPretrainModel(nn.Module):
    """Encoder + mask embedding (or decoder) + InfoNCE and MSE heads; forward returns a :class:`PretrainOutput`."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        if cfg.fstride != cfg.fshape or cfg.tstride != cfg.tshape:
            raise ValueError(
                f"model.fstride/tstride ({cfg.fstride}x{cfg.tstride}) must equal the patch shape "
                f"({cfg.fshape}x{cfg.tshape}): pretraining uses non-overlapping patches"
            )
        if cfg.nce_weight <= 0 and cfg.mse_weight <= 0:
            raise ValueError("model.nce_weight and model.mse_weight are both 0: nothing to train")
        if cfg.two_pass and cfg.pretrain_encoder == "visible":
            raise ValueError("model.two_pass applies to pretrain_encoder=all only")
        self.cfg = cfg
        self.encoder: ViTEncoder = build_encoder(cfg)
        self.patch_dim = cfg.fshape * cfg.tshape
        self.num_mask = num_masked(cfg.mask_patch, self.encoder.num_patches)
        self.mask_mode = cfg.mask_mode if cfg.mask_mode != "auto" else ("random" if cfg.is_frame else "cluster")
        if self.mask_mode == "cluster" and cfg.mask_sampler == "authors":
            self.mask_mode = "authors_cluster"
        head_dim = cfg.dim
        if cfg.pretrain_encoder == "visible":
            dec_dim = cfg.decoder_dim or cfg.dim
            dec_heads = cfg.decoder_heads or (cfg.heads if dec_dim == cfg.dim else max(1, dec_dim // 64))
            self.decoder = PretrainDecoder(
                cfg.dim, dec_dim, cfg.decoder_depth, dec_heads, cfg.num_prefix, self.encoder.grid, cfg.mlp_ratio
            )
            head_dim = dec_dim
        else:
            self.mask_embed = nn.Parameter(torch.zeros(1, 1, cfg.dim))
            nn.init.xavier_normal_(self.mask_embed)
        self.nce_head = _head(head_dim, self.patch_dim)
        self.mse_head = _head(head_dim, self.patch_dim)
        self.nce_head.apply(init_vit_weights)
        self.mse_head.apply(init_vit_weights)

    @property
    def visible(self) -> bool:
        return self.cfg.pretrain_encoder == "visible"

    def mask_count(self, grid: tuple[int, int]) -> int:
        """Masked tokens per clip for a token grid (the configured count, or fraction of this grid)."""
        n = grid[0] * grid[1]
        if grid == self.encoder.grid:
            return self.num_mask
        return num_masked(self.cfg.mask_patch, n)

    def sample_mask(
        self,
        batch: int,
        grid: Optional[tuple[int, int]] = None,
        generator: Optional[torch.Generator] = None,
        device: Optional[torch.device | str] = None,
    ) -> Tensor:
        """A (B, N) mask from the configured sampler (cluster for patch models, random for frame models)."""
        grid = grid or self.encoder.grid
        sizes = self.cfg.block_sizes if self.mask_mode == "inverse_block" else self.cfg.cluster_sizes
        return sample_mask(self.mask_mode, batch, grid, self.mask_count(grid), sizes, generator, device)

    def _resolve_mask(
        self, x: Tensor, grid: tuple[int, int], mask: Optional[Tensor], generator: Optional[torch.Generator]
    ) -> tuple[Tensor, int]:
        """The mask for this pass and its per-clip count.

        A sampled mask needs no host synchronisation. An explicit mask is checked (one read-back of its row counts),
        so pass ``mask=None`` in the training step.
        """
        n = grid[0] * grid[1]
        if mask is None:
            m = self.sample_mask(x.shape[0], grid, generator, x.device if generator is None else None)
            return m.to(x.device, non_blocking=True), self.mask_count(grid)
        if mask.shape != (x.shape[0], n) or mask.dtype != torch.bool:
            raise InputShapeError(
                f"mask must be a bool tensor of shape ({x.shape[0]}, {n}) for this input, "
                f"got {mask.dtype} {tuple(mask.shape)}"
            )
        counts = mask.sum(dim=1).tolist()
        if len(set(counts)) != 1 or counts[0] < 1:
            raise InputShapeError(
                f"every clip must mask the same positive number of tokens; got counts {sorted(set(counts))}"
            )
        return mask.to(x.device), counts[0]

    def _encode_all(self, x: Tensor, grid: tuple[int, int], mask: Tensor, num_mask: int) -> tuple[Tensor, Tensor]:
        """All-token pass: (hidden states at the masked tokens (B, M, D), masked indices (B, M))."""
        enc = self.encoder
        tokens = enc.embed_patches(x)
        tokens = torch.where(mask.unsqueeze(-1), self.mask_embed.to(tokens.dtype), tokens)
        h = enc.run_blocks(enc.add_positions(tokens, grid))[:, enc.num_prefix :]
        _, masked_idx = split_indices(mask, num_mask)
        return _gather(h, masked_idx), masked_idx

    def _encode_visible(
        self, x: Tensor, grid: tuple[int, int], mask: Tensor, num_mask: int
    ) -> tuple[Tensor, Tensor]:
        """Visible-token pass: encoder on prefix + unmasked tokens, decoder on the full grid; same outputs as above."""
        enc = self.encoder
        p = enc.num_prefix
        pos = enc.position_embedding(grid)
        tokens = enc.embed_patches(x) + pos[:, p:]
        visible_idx, masked_idx = split_indices(mask, num_mask)
        prefix = (enc.prefix_tokens + pos[:, :p]).to(tokens.dtype).expand(x.shape[0], -1, -1)
        h = enc.run_blocks(torch.cat([prefix, _gather(tokens, visible_idx)], dim=1))
        d = self.decoder(h, visible_idx, mask, grid)[:, p:]
        return _gather(d, masked_idx), masked_idx

    def _encode(self, x: Tensor, grid: tuple[int, int], mask: Tensor, num_mask: int) -> tuple[Tensor, Tensor]:
        if self.visible:
            return self._encode_visible(x, grid, mask, num_mask)
        return self._encode_all(x, grid, mask, num_mask)

    def forward(
        self, x: Tensor, mask: Optional[Tensor] = None, generator: Optional[torch.Generator] = None
    ) -> PretrainOutput:
        """(B, T, F) normalised filter bank -> losses and predictions at the masked tokens.

        With K = ``masks_per_clip`` > 1 the clips are repeated K times here (after the loader's decoding, fbank and
        augmentation) and ``mask``, if given, has K x B rows."""
        cfg = self.cfg
        grid = self.encoder.grid_for(x)
        if cfg.masks_per_clip > 1:
            x = x.repeat_interleave(cfg.masks_per_clip, dim=0)
        targets = patchify(x, cfg.fshape, cfg.tshape)
        zero = x.new_zeros((), dtype=torch.float32)
        nce = mse = acc = zero
        nce_pred = mse_pred = mse_mask = None
        use_nce, use_mse = cfg.nce_weight > 0, cfg.mse_weight > 0

        mask_a, m_a = self._resolve_mask(x, grid, mask, generator)
        hidden, idx = self._encode(x, grid, mask_a, m_a)
        if use_nce:
            nce_pred = self.nce_head(hidden)
            nce, acc = info_nce(nce_pred, _gather(targets, idx), cfg.nce_axis)
        if use_mse:
            if cfg.two_pass and use_nce:  # the authors' behaviour: a second pass over an independent mask
                mse_mask, m_b = self._resolve_mask(x, grid, mask, generator)
                hidden, idx = self._encode(x, grid, mse_mask, m_b)
            mse_pred = self.mse_head(hidden)
            mse = masked_mse(mse_pred, _gather(targets, idx))
        loss = cfg.nce_weight * nce + cfg.mse_weight * mse
        return PretrainOutput(loss, nce, mse, acc, mask_a, mse_pred, nce_pred, mse_mask)

    @torch.no_grad()
    def reconstruct(
        self, x: Tensor, mask: Optional[Tensor] = None, generator: Optional[torch.Generator] = None
    ) -> tuple[Tensor, Tensor]:
        """(mask, reconstruction (B, T, F)): the MSE head's patches at the masked tokens, the input elsewhere."""
        was_training = self.training
        self.eval()
        try:
            cfg = self.cfg
            grid = self.encoder.grid_for(x)
            mask, m = self._resolve_mask(x, grid, mask, generator)
            hidden, idx = self._encode(x, grid, mask, m)
            pred = self.mse_head(hidden).to(x.dtype)
            patches = patchify(x, cfg.fshape, cfg.tshape)
            patches = torch.scatter(patches, 1, idx.unsqueeze(-1).expand(-1, -1, patches.shape[-1]), pred)
            t_end, f_end = grid[1] * cfg.tshape, grid[0] * cfg.fshape
            recon = x.clone()
            recon[:, :t_end, :f_end] = unpatchify(patches, cfg.fshape, cfg.tshape, f_end, t_end)
            return mask, recon
        finally:
            self.train(was_training)


def build_pretrain_model(cfg: ModelConfig) -> SSASTPretrainModel:
    """The pretraining model a config describes."""
    return SSASTPretrainModel(cfg)
