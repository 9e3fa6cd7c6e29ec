"""The fine-tuning model: a ViT encoder, token pooling and a LayerNorm + Linear head, plus pretrained-encoder loading.

Pooling "mean" averages the patch-token outputs (prefix excluded; the SSAST default, since pretraining supervises the
tokens); "cls" averages the prefix-token outputs (AST's (cls + dist) / 2).

Two options reproduce the SUPERB setup the authors ran VoxCeleb1 with (s3prl's featurizer and utterance-level head):
``model.layer_weights`` pools a softmax-weighted sum of every block's output instead of the final normalised output,
and ``model.projector_dim`` replaces the LayerNorm + Linear head by Linear(D, k) + Linear(k, classes).
"""
from __future__ import annotations

from typing import Any, Mapping

import torch
from torch import nn

from ssast.config import ModelConfig
from ssast.models.encoder import build_encoder
from ssast.models.posembed import WeightMismatchError, adapt_pos_embed, adapt_prefix
from ssast.models.tokenizer import grid_shape


class SSASTClassifier(nn.Module):
    """Encoder + pooling + head for clip classification (fine-tuning, evaluation, embeddings)."""

    def __init__(self, cfg: ModelConfig, num_classes: int):
        super().__init__()
        if num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
        if cfg.pooling not in ("mean", "cls"):
            raise ValueError(f"model.pooling must be 'mean' or 'cls', got {cfg.pooling!r}")
        self.cfg = cfg
        self.num_classes = num_classes
        self.pooling = cfg.pooling
        self.encoder = build_encoder(cfg)
        dim = self.encoder.dim
        if cfg.layer_weights:
            # one weight per block, zeros so that the softmax starts equal (s3prl's Featurizer)
            self.layer_weights = nn.Parameter(torch.zeros(self.encoder.depth))
            # the final norm is off this path: frozen, so the optimiser and DDP skip it; it stays in the state dict,
            # so pretrained encoders load as they are
            self.encoder.norm.requires_grad_(False)
        else:
            self.register_parameter("layer_weights", None)  # no state-dict key: checkpoints as before
        if cfg.projector_dim:
            # SUPERB's projector and linear classifier, PyTorch's default init as in s3prl
            self.head = nn.Sequential(nn.Linear(dim, cfg.projector_dim), nn.Linear(cfg.projector_dim, num_classes))
        else:
            self.head = nn.Sequential(nn.LayerNorm(dim), nn.Linear(dim, num_classes))
            nn.init.trunc_normal_(self.head[1].weight, std=0.02)
            nn.init.zeros_(self.head[1].bias)

    def pool(self, tokens: torch.Tensor) -> torch.Tensor:
        """(B, P+N, D) encoder outputs -> (B, D) clip embedding by the configured pooling."""
        p = self.encoder.num_prefix
        if self.pooling == "cls":
            return tokens[:, :p].mean(dim=1)
        return tokens[:, p:].mean(dim=1)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """(B, T, F) fbank -> (B, P+N, D) token features, prefix tokens first (timm's meaning): the encoder output, or
        with ``model.layer_weights`` the weighted sum of every block's output."""
        if self.layer_weights is None:
            return self.encoder(x)
        return self.combine_layers(self.encoder.forward_intermediates(x)[1])

    def combine_layers(self, layers: list[torch.Tensor]) -> torch.Tensor:
        """Softmax(layer_weights)-weighted sum of the blocks' (B, L, D) outputs, in their dtype.

        Summed term by term rather than stacked: the block outputs are kept for the backward pass anyway, so this
        adds no copy of all of them.
        """
        w = torch.softmax(self.layer_weights.float(), dim=0)
        out = layers[0] * w[0]
        for h, wi in zip(layers[1:], w[1:]):
            out = out + h * wi
        return out

    def forward_head(self, tokens: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        """(B, P+N, D) encoder outputs -> (B, C) logits, or with ``pre_logits`` the pooled (B, D) clip embedding."""
        pooled = self.pool(tokens)
        return pooled if pre_logits else self.head(pooled)

    def patch_tokens(self, tokens: torch.Tensor) -> torch.Tensor:
        """The (B, N, D) outputs of the patch (or frame) tokens, prefix dropped."""
        return tokens[:, self.encoder.num_prefix :]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, T, F) fbank -> (B, C) logits."""
        return self.forward_head(self.forward_features(x))

    @torch.jit.ignore
    def group_matcher(self, coarse: bool = False) -> dict[str, Any]:
        """timm-style layer grouping (stem, blocks by index, final norm) for layer-wise lr decay."""
        # Non-capturing stem group: timm turns captured groups into numeric ordinals.
        return dict(
            stem=r"^encoder\.(?:prefix_tokens|pos_embed|patch_embed)",
            blocks=r"^encoder\.blocks\.(\d+)"
            if coarse
            else [(r"^encoder\.blocks\.(\d+)", None), (r"^encoder\.norm", (99999,))],
        )

    @torch.jit.ignore
    def no_weight_decay(self) -> set[str]:
        """Parameters that must not be weight-decayed (timm convention; 1-D weights are excluded by timm anyway)."""
        return {"encoder.pos_embed", "encoder.prefix_tokens"}


def _strip_prefix(state: Mapping[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    """Drop ``prefix`` from keys that have it (keys without it are kept as they are)."""
    return {(k[len(prefix) :] if k.startswith(prefix) else k): v for k, v in state.items()}


def _few(names: list[str], n: int = 8) -> str:
    """A short, readable list of key names."""
    shown = ", ".join(names[:n])
    return shown + (f", ... ({len(names)} in all)" if len(names) > n else "")


def load_state_strict(module: nn.Module, state: Mapping[str, torch.Tensor], what: str = "model") -> None:
    """Load ``state`` into ``module``; missing, unexpected or misshapen keys raise WeightMismatchError."""
    own = module.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    shapes = sorted(
        f"{k} {tuple(state[k].shape)} vs {tuple(own[k].shape)}"
        for k in set(own) & set(state)
        if tuple(state[k].shape) != tuple(own[k].shape)
    )
    problems = []
    if missing:
        problems.append(f"missing keys: {_few(missing)}")
    if unexpected:
        problems.append(f"unexpected keys: {_few(unexpected)}")
    if shapes:
        problems.append(f"shape mismatches (given vs model): {_few(shapes)}")
    if problems:
        raise WeightMismatchError(f"weights do not fit the {what}: " + "; ".join(problems))
    module.load_state_dict(dict(state), strict=True)


def load_encoder_into(model: SSASTClassifier, encoder_state: Mapping[str, torch.Tensor], src_cfg: ModelConfig) -> str:
    """Copy a pretrained ViTEncoder state (keys with or without ``encoder.``) into ``model``, adapting positions.

    The patch projection is kept as-is (only the stride may change), prefix tokens are kept (2 -> 1 keeps cls,
    1 -> 2 duplicates it), the positional embedding is adapted from the source grid to the model's grid, and
    everything else must match exactly. Returns a one-line description of what was adapted.
    """
    src, dst = src_cfg, model.cfg
    state = _strip_prefix(encoder_state, "encoder.")
    if (src.fshape, src.tshape) != (dst.fshape, dst.tshape):
        raise WeightMismatchError(
            f"patch shape {src.fshape}x{src.tshape} of the pretrained encoder differs from the model's "
            f"{dst.fshape}x{dst.tshape}: fine-tune with model.fshape={src.fshape} model.tshape={src.tshape}"
        )
    for key in ("patch_embed.proj.weight", "pos_embed", "prefix_tokens"):
        if key not in state:
            raise WeightMismatchError(f"the pretrained encoder has no {key}: not an encoder state dict")
    w = state["patch_embed.proj.weight"]
    if tuple(w.shape[-2:]) != (src.fshape, src.tshape):
        raise WeightMismatchError(
            f"patch_embed.proj.weight has kernel {tuple(w.shape[-2:])} but the source config says "
            f"{src.fshape}x{src.tshape}"
        )
    if w.shape[0] != model.encoder.dim:
        raise WeightMismatchError(
            f"the pretrained encoder is {w.shape[0]}-dim but the model is {model.encoder.dim}-dim: "
            f"set model.size (or model.dim/depth/heads) to the pretrained model's"
        )
    old_grid = grid_shape(src.input_fdim, src.input_tdim, src.fshape, src.tshape, src.fstride, src.tstride)
    new_grid = tuple(model.encoder.grid)
    p_old = state["prefix_tokens"].shape[1]
    p_new = model.encoder.num_prefix
    state = dict(state)
    state["pos_embed"] = adapt_pos_embed(state["pos_embed"], old_grid, new_grid, p_old, p_new)
    state["prefix_tokens"] = adapt_prefix(state["prefix_tokens"], p_new)
    load_state_strict(model.encoder, state, what="classifier's encoder")
    notes = f"positions {old_grid[0]}x{old_grid[1]} -> {new_grid[0]}x{new_grid[1]}"
    if p_old != p_new:
        notes += f", prefix tokens {p_old} -> {p_new}"
    if (src.fstride, src.tstride) != (dst.fstride, dst.tstride):
        notes += f", stride {src.fstride}x{src.tstride} -> {dst.fstride}x{dst.tstride}"
    return notes
