"""ImageNet initialisation (the AST path): a timm DeiT state dict converted into a ViTEncoder state for audio.

The RGB patch projection is summed over its three input channels (what the AST code does, so a grey image gives the
same response), the cls and distillation tokens become the prefix tokens, and the square image grid of positional
embeddings (24x24 for 384-pixel DeiTs, 14x14 for 224) is cropped or interpolated to the audio grid. Heads are dropped.
"""
from __future__ import annotations

import math
from typing import Mapping

import torch

from ssast.config import ModelConfig
from ssast.models.posembed import WeightMismatchError, adapt_pos_embed, adapt_prefix
from ssast.models.tokenizer import grid_shape

# Default timm DeiT for each encoder width (the distilled DeiTs carry both prefix tokens, like the released models).
DEIT_NAMES = {
    768: "deit_base_distilled_patch16_384",
    384: "deit_small_distilled_patch16_224",
    192: "deit_tiny_distilled_patch16_224",
}


def deit_name_for(dim: int) -> str:
    """The default timm DeiT name for an encoder width (192, 384 or 768)."""
    if dim not in DEIT_NAMES:
        raise WeightMismatchError(
            f"no ImageNet DeiT of width {dim}: use model.size tiny, small or base, or init=imagenet:FILE"
        )
    return DEIT_NAMES[dim]


def unwrap_state(obj: object) -> dict[str, torch.Tensor]:
    """The tensor dict inside a loaded weights file ({'model': ...} or {'state_dict': ...} wrappers are opened)."""
    for key in ("model", "state_dict", "module"):
        if isinstance(obj, Mapping) and key in obj and isinstance(obj[key], Mapping):
            obj = obj[key]
    if not isinstance(obj, Mapping) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise WeightMismatchError("not a state dict of tensors")
    return {str(k[7:] if str(k).startswith("module.") else k): v for k, v in obj.items()}


def deit_to_encoder_state(deit_state: Mapping[str, torch.Tensor], dst_cfg: ModelConfig) -> dict[str, torch.Tensor]:
    """Convert a timm DeiT/ViT state dict (16x16 patches) into a ViTEncoder state for the audio model ``dst_cfg``."""
    dst = dst_cfg
    required = ("patch_embed.proj.weight", "patch_embed.proj.bias", "cls_token", "pos_embed")
    absent = [k for k in required if k not in deit_state]
    if absent:
        raise WeightMismatchError(f"not a timm DeiT/ViT state dict: no {', '.join(absent)}")
    if (dst.fshape, dst.tshape) != (16, 16):
        raise WeightMismatchError(
            f"ImageNet DeiT weights need 16x16 patches, the model has {dst.fshape}x{dst.tshape}: "
            f"set model.fshape=16 model.tshape=16"
        )
    w = deit_state["patch_embed.proj.weight"]
    if tuple(w.shape[-2:]) != (16, 16):
        raise WeightMismatchError(f"the DeiT has {tuple(w.shape[-2:])} patches; only 16x16 DeiTs can be used")
    if w.shape[0] != dst.dim:
        raise WeightMismatchError(
            f"the DeiT is {w.shape[0]}-dim but the model is {dst.dim}-dim: pick the DeiT of the model's size"
        )
    prefix = [deit_state["cls_token"]]
    if "dist_token" in deit_state:
        prefix.append(deit_state["dist_token"])
    prefix_tokens = torch.cat(prefix, dim=1)
    p_src = prefix_tokens.shape[1]
    n_src = deit_state["pos_embed"].shape[1] - p_src
    side = math.isqrt(n_src)
    if side * side != n_src:
        raise WeightMismatchError(f"the DeiT's positional embedding has {n_src} grid positions, not a square grid")
    new_grid = grid_shape(dst.input_fdim, dst.input_tdim, dst.fshape, dst.tshape, dst.fstride, dst.tstride)

    out: dict[str, torch.Tensor] = {}
    # Sum over RGB: a one-channel input then sees the filter a grey image would.
    out["patch_embed.proj.weight"] = w.sum(dim=1, keepdim=True)
    out["patch_embed.proj.bias"] = deit_state["patch_embed.proj.bias"]
    out["prefix_tokens"] = adapt_prefix(prefix_tokens, dst.num_prefix)
    out["pos_embed"] = adapt_pos_embed(deit_state["pos_embed"], (side, side), new_grid, p_src, dst.num_prefix)
    for k, v in deit_state.items():
        if k.startswith("blocks.") or k.startswith("norm."):
            out[k] = v
    return out
