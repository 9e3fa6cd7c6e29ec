"""Conversion of the SSAST/AST authors' released checkpoints into our ModelConfig and state dict (a pure converter:
:func:`ssast.models.factory.import_authors_checkpoint` writes the result in our checkpoint format).

Their files are DataParallel state dicts (every key ``module.``-prefixed) with the encoder under ``v.``
(timm DeiT names) and either the pretraining heads (``cpredlayer``, ``gpredlayer``, ``mask_embed``, ``p_input_*dim``)
or a fine-tuning head (``mlp_head``). Everything our model needs is inferred from the tensors: patch shape and width
from the patch projection, depth from the block indices, heads from the width, prefix count from ``v.dist_token``, and
the grid from ``p_input_fdim/tdim`` or the positional-embedding length. Token order, patch flattening and the head
layouts are the same as ours, so the conversion is a renaming and the converted model computes what theirs computes.

What the tensors cannot say: the fine-tuned models' pooling. AST checkpoints (e.g. ``audioset_10_10_0.4593.pth``)
average the two prefix outputs (``pooling="cls"``); SSAST fine-tuning defaults to the mean of the patch tokens
(``pooling="mean"``, their 'ft_avgtok'), which is what we assume unless told otherwise.
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Mapping, Optional

import torch

from ssast.config import MODEL_SIZES, ModelConfig
from ssast.models.posembed import WeightMismatchError
from ssast.models.tokenizer import grid_shape
from ssast.models.weightfiles import CheckpointError, load_torch_file

# The frequency size every released model was trained on (128 mel bins).
AUTHORS_INPUT_FDIM = 128
# Fine-tuning input lengths tried, in order, when none is given: AudioSet, ESC-50, Speech Commands.
_DEFAULT_TDIMS = (1024, 512, 128)


def _heads_for(dim: int) -> int:
    """Attention heads of the released sizes (192 -> 3, 384 -> 6, 768 -> 12; 64-dim heads otherwise)."""
    return {192: 3, 384: 6, 768: 12}.get(dim, max(1, dim // 64))


def size_fields(dim: int, depth: int, heads: int) -> dict:
    """ModelConfig size fields: a named size when the numbers are one, else size=custom with explicit numbers."""
    for name, (d, l, h) in MODEL_SIZES.items():
        if (d, l, h) == (dim, depth, heads):
            return {"size": name}
    return {"size": "custom", "dim": dim, "depth": depth, "heads": heads}


def _infer_strides(
    n_tokens: int,
    fshape: int,
    tshape: int,
    input_fdim: int,
    input_tdim: int,
    fstride: Optional[int],
    tstride: Optional[int],
) -> list[tuple[int, int]]:
    """All (fstride, tstride) that give ``n_tokens`` tokens for this input; an axis the patch spans has one choice."""
    fs_options = [fstride] if fstride else ([fshape] if fshape == input_fdim else range(1, fshape + 1))
    ts_options = [tstride] if tstride else ([tshape] if tshape == input_tdim else range(1, tshape + 1))
    found = []
    for fs in fs_options:
        for ts in ts_options:
            if input_fdim < fshape or input_tdim < tshape:
                continue
            f, t = grid_shape(input_fdim, input_tdim, fshape, tshape, fs, ts)
            if f * t == n_tokens:
                found.append((fs, ts))
    return found


def convert_authors_checkpoint(
    state: Mapping[str, torch.Tensor],
    *,
    fstride: Optional[int] = None,
    tstride: Optional[int] = None,
    input_tdim: Optional[int] = None,
    pooling: str = "mean",
) -> tuple[str, ModelConfig, dict[str, torch.Tensor], int]:
    """Authors' state dict -> (kind "pretrain"|"classifier", ModelConfig, our state dict, num_classes (0 for pretrain)).

    For fine-tuned models the stride is inferred from the positional-embedding length at ``input_tdim`` frames
    (1024, then 512 and 128 when not given), or taken from ``fstride``/``tstride``; ``pooling`` is "mean" (SSAST)
    or "cls" (AST checkpoints).
    """
    sd = {(k[7:] if k.startswith("module.") else k): v for k, v in state.items()}
    if "v.patch_embed.proj.weight" not in sd or "v.pos_embed" not in sd or "v.cls_token" not in sd:
        raise WeightMismatchError(
            "not an SSAST/AST checkpoint: no v.patch_embed.proj.weight / v.pos_embed / v.cls_token "
            f"(first keys: {', '.join(list(sd)[:5])})"
        )
    is_pretrain = any(k.startswith("cpredlayer.") for k in sd)
    is_finetuned = any(k.startswith("mlp_head.") for k in sd)
    if is_pretrain == is_finetuned:
        raise WeightMismatchError(
            "cannot tell a pretrained (cpredlayer.*) from a fine-tuned (mlp_head.*) checkpoint: "
            f"{'both' if is_pretrain else 'neither'} present"
        )
    if pooling not in ("mean", "cls"):
        raise ValueError(f"pooling must be 'mean' or 'cls', got {pooling!r}")

    w = sd["v.patch_embed.proj.weight"]
    if w.dim() != 4 or w.shape[1] != 1:
        raise WeightMismatchError(
            f"v.patch_embed.proj.weight has shape {tuple(w.shape)}, expected (D, 1, fshape, tshape)"
        )
    dim, fshape, tshape = int(w.shape[0]), int(w.shape[2]), int(w.shape[3])
    depth = len({int(m.group(1)) for k in sd for m in [re.match(r"v\.blocks\.(\d+)\.", k)] if m})
    heads = _heads_for(dim)
    num_prefix = 2 if "v.dist_token" in sd else 1
    n_tokens = int(sd["v.pos_embed"].shape[1]) - num_prefix
    fdim = max(AUTHORS_INPUT_FDIM, fshape)
    base = dict(size_fields(dim, depth, heads), fshape=fshape, tshape=tshape, num_prefix=num_prefix)

    if is_pretrain:
        if "p_input_fdim" in sd and "p_input_tdim" in sd:
            fdim, tdim = int(sd["p_input_fdim"].item()), int(sd["p_input_tdim"].item())
        else:
            rows = fdim // fshape
            if n_tokens % rows:
                raise WeightMismatchError(
                    f"v.pos_embed has {n_tokens} grid positions, not a multiple of the {rows} frequency rows"
                )
            tdim = (n_tokens // rows) * tshape
        f, t = grid_shape(fdim, tdim, fshape, tshape, fshape, tshape)
        if f * t != n_tokens:
            raise WeightMismatchError(
                f"v.pos_embed has {n_tokens} grid positions but a {fdim}x{tdim} input in {fshape}x{tshape} patches "
                f"gives {f}x{t}"
            )
        # The released models mask 400 (or 250) of 512 tokens; keep that count when it fits this grid.
        mask_patch = 400 if n_tokens > 400 else max(1, round(n_tokens * 400 / 512))
        cfg = ModelConfig(**base, input_fdim=fdim, input_tdim=tdim, mask_patch=mask_patch)
        num_classes = 0
    else:
        tdims = [input_tdim] if input_tdim else list(_DEFAULT_TDIMS)
        chosen = None
        for tdim in tdims:
            found = _infer_strides(n_tokens, fshape, tshape, fdim, tdim, fstride, tstride)
            if len(found) > 1:
                equal = [c for c in found if c[0] == c[1]]
                found = equal if len(equal) == 1 else found
            if len(found) == 1:
                chosen = (tdim, *found[0])
                break
            if len(found) > 1:
                raise WeightMismatchError(
                    f"{n_tokens} tokens at {fdim}x{tdim} fit several strides {found}: give fstride and tstride"
                )
        if chosen is None:
            raise WeightMismatchError(
                f"no stride gives {n_tokens} tokens for {fshape}x{tshape} patches at "
                f"{fdim}x{'/'.join(map(str, tdims))} frames: give input_tdim (the fine-tuning input length) "
                f"and/or fstride/tstride"
            )
        tdim, fs, ts = chosen
        cfg = ModelConfig(
            **base, fstride=fs, tstride=ts, input_fdim=fdim, input_tdim=tdim, pooling=pooling
        )
        num_classes = int(sd["mlp_head.1.weight"].shape[0]) if "mlp_head.1.weight" in sd else 0
        if num_classes < 1:
            raise WeightMismatchError("the fine-tuned checkpoint has no mlp_head.1.weight (its classifier layer)")
        cfg.num_classes = num_classes

    out: dict[str, torch.Tensor] = {}
    unknown = []
    prefix = [sd["v.cls_token"]] + ([sd["v.dist_token"]] if num_prefix == 2 else [])
    out["encoder.prefix_tokens"] = torch.cat(prefix, dim=1)
    for k, v in sd.items():
        if k in ("v.cls_token", "v.dist_token", "p_input_fdim", "p_input_tdim"):
            continue
        if k.startswith(("v.head.", "v.head_dist.")):
            continue  # DeiT's unused ImageNet heads
        if k.startswith("v."):
            out["encoder." + k[2:]] = v
        elif is_pretrain and k.startswith("cpredlayer."):
            out["nce_head." + k[len("cpredlayer.") :]] = v
        elif is_pretrain and k.startswith("gpredlayer."):
            out["mse_head." + k[len("gpredlayer.") :]] = v
        elif is_pretrain and k == "mask_embed":
            out["mask_embed"] = v
        elif not is_pretrain and k.startswith("mlp_head."):
            out["head." + k[len("mlp_head.") :]] = v
        else:
            unknown.append(k)
    if unknown:
        raise WeightMismatchError(f"unrecognised keys in the authors' checkpoint: {', '.join(unknown[:8])}")
    return ("pretrain" if is_pretrain else "classifier"), cfg, out, num_classes


def load_authors_file(
    src_pth: str | Path,
    *,
    fstride: Optional[int] = None,
    tstride: Optional[int] = None,
    input_tdim: Optional[int] = None,
    pooling: str = "mean",
) -> tuple[str, ModelConfig, dict[str, torch.Tensor], int]:
    """Read an authors' ``.pth`` safely (weights only, on the CPU) and convert it; errors name the file."""
    src_pth = Path(src_pth)
    if not src_pth.is_file():
        raise CheckpointError(f"{src_pth}: file not found")
    obj = load_torch_file(src_pth, "an SSAST/AST checkpoint as the authors released it (a .pth state dict of tensors)")
    if not isinstance(obj, Mapping) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise CheckpointError(f"{src_pth}: not a state dict of tensors, so not an SSAST/AST checkpoint")
    try:
        return convert_authors_checkpoint(
            obj, fstride=fstride, tstride=tstride, input_tdim=input_tdim, pooling=pooling
        )
    except WeightMismatchError as e:
        raise CheckpointError(f"{src_pth}: {e}") from None
