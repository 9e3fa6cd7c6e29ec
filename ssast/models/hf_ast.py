"""The layout of Hugging Face transformers' AST (``ASTForAudioClassification``, ``ASTModel``) and its conversion to and
from ours: a pure converter of configs and tensors, without transformers (:mod:`ssast.serve.export.hf` writes the folders).

A transformers AST is our classifier with ``pooling="cls"`` and two prefix tokens: it averages the cls and
distillation outputs, then a LayerNorm + Linear head. Its patch embedding is the same one-channel conv over the
(freq, time) image, and its tokens come out of ``flatten(2)`` of that conv, frequency-major as ours, so positions need
no permutation. What differs is naming and one split: timm's fused ``attn.qkv`` is transformers' separate query, key
and value (rows 0:D, D:2D and 2D:3D of the fused weight).

Weight files use the names every published AST has (``encoder.layer.N.attention.attention.query``, ...), which
transformers 4 reads and transformers 5 still writes (``save_pretrained`` maps its ``layers.N.attention.q_proj``
modules back to them); files with the module names of transformers 5 are read too.
"""
from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any, Mapping, Optional

import safetensors.torch
import torch

from ssast.config import DATASET_STATS, ModelConfig
from ssast.models.authors import size_fields
from ssast.models.posembed import WeightMismatchError
from ssast.models.weightfiles import CheckpointError, load_torch_file

MODEL_TYPE = "audio-spectrogram-transformer"
CONFIG = "config.json"
PREPROCESSOR = "preprocessor_config.json"
BASE = "audio_spectrogram_transformer."  # the base model's prefix inside ASTForAudioClassification
FEATURE_EXTRACTOR = "ASTFeatureExtractor"

# ASTConfig's defaults, for keys a config.json leaves out (transformers writes only what differs from its defaults).
AST_DEFAULTS: dict[str, Any] = {
    "hidden_size": 768, "num_hidden_layers": 12, "num_attention_heads": 12, "intermediate_size": 3072,
    "hidden_act": "gelu", "layer_norm_eps": 1e-12, "patch_size": 16, "qkv_bias": True, "frequency_stride": 10,
    "time_stride": 10, "max_length": 1024, "num_mel_bins": 128,
}
# ASTFeatureExtractor's defaults: AST's AudioSet settings.
FEATURE_DEFAULTS: dict[str, Any] = {
    "sampling_rate": 16000, "num_mel_bins": 128, "max_length": 1024, "do_normalize": True,
    "mean": DATASET_STATS["audioset"][0], "std": DATASET_STATS["audioset"][1],
}

# Per block: (our name under encoder.blocks.N., transformers' name under encoder.layer.N.)
_BLOCK_NAMES = (
    ("norm1", "layernorm_before"),
    ("attn.proj", "attention.output.dense"),
    ("norm2", "layernorm_after"),
    ("mlp.fc1", "intermediate.dense"),
    ("mlp.fc2", "output.dense"),
)
_QKV = ("query", "key", "value")  # the thirds of timm's fused qkv, in order
# Outside the blocks: (ours, transformers'); the head has no base-model prefix in transformers.
_TOP_NAMES = (
    ("encoder.patch_embed.proj", BASE + "embeddings.patch_embeddings.projection"),
    ("encoder.norm", BASE + "layernorm"),
    ("head.0", "classifier.layernorm"),
    ("head.1", "classifier.dense"),
)
# transformers 5 module names -> the names in files (applied after the base prefix is removed)
_MODULE_NAMES = (
    (r"^layers\.(\d+)\.attention\.q_proj\.", r"encoder.layer.\1.attention.attention.query."),
    (r"^layers\.(\d+)\.attention\.k_proj\.", r"encoder.layer.\1.attention.attention.key."),
    (r"^layers\.(\d+)\.attention\.v_proj\.", r"encoder.layer.\1.attention.attention.value."),
    (r"^layers\.(\d+)\.attention\.o_proj\.", r"encoder.layer.\1.attention.output.dense."),
    (r"^layers\.(\d+)\.mlp\.fc1\.", r"encoder.layer.\1.intermediate.dense."),
    (r"^layers\.(\d+)\.mlp\.fc2\.", r"encoder.layer.\1.output.dense."),
    (r"^layers\.(\d+)\.(layernorm_before|layernorm_after)\.", r"encoder.layer.\1.\2."),
)


def is_hf_folder(path: str | Path) -> bool:
    """Whether ``path`` is a transformers AST folder (a config.json with model_type audio-spectrogram-transformer)."""
    f = Path(path) / CONFIG
    if not f.is_file():
        return False
    try:
        doc = json.loads(f.read_text())
    except (OSError, ValueError):
        return False
    return isinstance(doc, dict) and doc.get("model_type") == MODEL_TYPE


def _read_json(f: Path) -> dict:
    try:
        doc = json.loads(f.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{f}: not valid JSON ({e})") from None
    if not isinstance(doc, dict):
        raise CheckpointError(f"{f}: expected a JSON object")
    return doc


def read_hf_config(folder: str | Path) -> dict:
    """config.json of a transformers AST folder, with ASTConfig's defaults filled in."""
    f = Path(folder) / CONFIG
    doc = _read_json(f)
    if doc.get("model_type") != MODEL_TYPE:
        raise CheckpointError(f"{f}: model_type {doc.get('model_type')!r} is not {MODEL_TYPE!r}: not a transformers "
                              "AST")
    return {**AST_DEFAULTS, **doc}


def read_feature_settings(folder: str | Path) -> Optional[dict]:
    """preprocessor_config.json with ASTFeatureExtractor's defaults filled in; None when the folder has none."""
    f = Path(folder) / PREPROCESSOR
    if not f.is_file():
        return None
    doc = _read_json(f)
    kind = doc.get("feature_extractor_type", FEATURE_EXTRACTOR)
    if kind != FEATURE_EXTRACTOR:
        raise CheckpointError(
            f"{f}: feature_extractor_type {kind!r} computes other features than {FEATURE_EXTRACTOR}; "
            "ssast can only reproduce AST's Kaldi filter bank"
        )
    return {**FEATURE_DEFAULTS, **doc}


def _refuse(where: Path, what: str) -> CheckpointError:
    return CheckpointError(f"{where / CONFIG}: {what}")


def model_config_from_hf(cfg: Mapping[str, Any], where: str | Path) -> ModelConfig:
    """Our ModelConfig for a transformers AST config (cls pooling, two prefix tokens); refuses what ours cannot run."""
    where = Path(where)
    if cfg["hidden_act"] != "gelu":
        raise _refuse(where, f"hidden_act {cfg['hidden_act']!r}: ssast's blocks use exact GELU ('gelu') only")
    if not cfg["qkv_bias"]:
        raise _refuse(where, "qkv_bias false: ssast's attention always has query/key/value biases")
    patch = cfg["patch_size"]
    if isinstance(patch, (list, tuple)):
        if len(patch) != 2 or patch[0] != patch[1]:
            raise _refuse(where, f"patch_size {patch}: transformers' AST builds square patches only")
        patch = patch[0]
    dim, heads, hidden = int(cfg["hidden_size"]), int(cfg["num_attention_heads"]), int(cfg["intermediate_size"])
    if dim % heads or cfg.get("head_dim", dim // heads) != dim // heads:
        raise _refuse(where, f"hidden_size {dim} with {heads} heads (head_dim {cfg.get('head_dim')}): "
                             "ssast needs heads that split the width evenly")
    mlp_ratio = hidden / dim
    if int(dim * mlp_ratio) != hidden:
        raise _refuse(where, f"intermediate_size {hidden} is not a width ssast's MLP can build from {dim}")
    depth = int(cfg["num_hidden_layers"])
    return ModelConfig(
        **size_fields(dim, depth, heads), mlp_ratio=mlp_ratio, fshape=int(patch), tshape=int(patch),
        fstride=int(cfg["frequency_stride"]), tstride=int(cfg["time_stride"]), input_fdim=int(cfg["num_mel_bins"]),
        input_tdim=int(cfg["max_length"]), num_prefix=2, pooling="cls", norm_eps=float(cfg["layer_norm_eps"]),
    )


def labels_from_hf(cfg: Mapping[str, Any], num_classes: int) -> Optional[list[str]]:
    """Class names in head order from ``id2label`` (None when it does not name exactly the head's classes)."""
    id2label = cfg.get("id2label") or {}
    try:
        names = {int(k): str(v) for k, v in id2label.items()}
    except (TypeError, ValueError):
        return None
    if sorted(names) != list(range(num_classes)):
        return None
    return [names[i] for i in range(num_classes)]


# ---------------------------------------------------------------------------------------------------------------
# Tensors


def _file_names(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Keys in the file layout with the base prefix: transformers 5 module names and headless ASTModel keys mapped."""
    out = {}
    for key, value in state.items():
        head = key.startswith("classifier.")
        k = key[len(BASE) :] if key.startswith(BASE) else key
        if not head:
            for pattern, repl in _MODULE_NAMES:
                k = re.sub(pattern, repl, k)
            k = BASE + k
        out[k] = value
    return out


def hf_depth(state: Mapping[str, torch.Tensor]) -> int:
    """Number of transformer layers in a state dict of file-layout keys."""
    layer = re.compile(re.escape(BASE) + r"encoder\.layer\.(\d+)\.")
    return len({m.group(1) for m in map(layer.match, state) if m})


def hf_to_ours(state: Mapping[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], bool]:
    """A transformers AST state dict (file or module names, with or without head) -> (our classifier's state dict,
    whether it has the classification head). Unknown keys are an error."""
    src = _file_names(state)
    used: set[str] = set()

    def take(key: str) -> torch.Tensor:
        if key not in src:
            raise WeightMismatchError(f"the transformers AST weights have no {key}")
        used.add(key)
        return src[key]

    emb = BASE + "embeddings."
    out = {
        "encoder.prefix_tokens": torch.cat([take(emb + "cls_token"), take(emb + "distillation_token")], dim=1),
        "encoder.pos_embed": take(emb + "position_embeddings"),
    }
    has_head = "classifier.dense.weight" in src
    for ours, theirs in _TOP_NAMES:
        if ours.startswith("head.") and not has_head:
            continue
        for p in ("weight", "bias"):
            out[f"{ours}.{p}"] = take(f"{theirs}.{p}")
    for i in range(hf_depth(src)):
        layer = f"{BASE}encoder.layer.{i}."
        for p in ("weight", "bias"):
            out[f"encoder.blocks.{i}.attn.qkv.{p}"] = torch.cat(
                [take(f"{layer}attention.attention.{name}.{p}") for name in _QKV], dim=0
            )
            for ours, theirs in _BLOCK_NAMES:
                out[f"encoder.blocks.{i}.{ours}.{p}"] = take(f"{layer}{theirs}.{p}")
    if not has_head:
        used.update(k for k in src if k.startswith("classifier.layernorm."))  # a head of 0 labels: nothing to use
    unknown = sorted(set(src) - used)
    if unknown:
        raise WeightMismatchError(f"unrecognised keys in the transformers AST weights: {', '.join(unknown[:8])}")
    return out, has_head


def ours_to_hf(state: Mapping[str, torch.Tensor], depth: int, head: bool = True) -> dict[str, torch.Tensor]:
    """Our two-prefix classifier's state dict -> ASTForAudioClassification's, in the file layout (contiguous copies).

    ``head=False``: the encoder alone, as ``ASTModel`` saves it (no base prefix, no classifier)."""
    base = BASE if head else ""
    emb = base + "embeddings."
    prefix = state["encoder.prefix_tokens"]
    out = {
        emb + "cls_token": prefix[:, :1],
        emb + "distillation_token": prefix[:, 1:2],
        emb + "position_embeddings": state["encoder.pos_embed"],
    }
    for ours, theirs in _TOP_NAMES:
        if ours.startswith("head.") and not head:
            continue
        for p in ("weight", "bias"):
            out[f"{theirs.removeprefix(BASE) if not head else theirs}.{p}"] = state[f"{ours}.{p}"]
    for i in range(depth):
        layer = f"{base}encoder.layer.{i}."
        for p in ("weight", "bias"):
            for name, part in zip(_QKV, state[f"encoder.blocks.{i}.attn.qkv.{p}"].chunk(3, dim=0)):
                out[f"{layer}attention.attention.{name}.{p}"] = part
            for ours, theirs in _BLOCK_NAMES:
                out[f"{layer}{theirs}.{p}"] = state[f"encoder.blocks.{i}.{ours}.{p}"]
    return {k: v.detach().cpu().contiguous().clone() for k, v in out.items()}


_WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")


def _load_one(f: Path) -> dict[str, torch.Tensor]:
    """One weights file: safetensors, or a PyTorch pickle read with ``weights_only=True``."""
    if f.suffix == ".safetensors":
        try:
            return safetensors.torch.load_file(str(f), device="cpu")
        except Exception as e:  # header, truncation and dtype errors all mean a damaged file
            raise CheckpointError(f"{f}: cannot read the weights ({type(e).__name__}: {e})") from None
    obj = load_torch_file(f, "a transformers AST state dict")
    if not isinstance(obj, Mapping) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise CheckpointError(f"{f}: not a state dict of tensors")
    return dict(obj)


def read_hf_weights(folder: str | Path) -> dict[str, torch.Tensor]:
    """The weights of a transformers folder: model.safetensors or pytorch_model.bin, whole or sharded (an index)."""
    folder = Path(folder)
    for name in _WEIGHT_FILES:
        if (folder / name).is_file():
            return _load_one(folder / name)
        index = folder / f"{name}.index.json"
        if index.is_file():
            weight_map = _read_json(index).get("weight_map")
            if not isinstance(weight_map, dict):
                raise CheckpointError(f"{index}: no \"weight_map\" object")
            state: dict[str, torch.Tensor] = {}
            for shard in sorted(set(weight_map.values())):
                if not (folder / shard).is_file():
                    raise CheckpointError(f"{folder / shard}: missing; {index} lists it")
                state.update(_load_one(folder / shard))
            return state
    raise CheckpointError(f"{folder}: no model.safetensors or pytorch_model.bin (whole or sharded) beside {CONFIG}")


def load_hf_folder(
    folder: str | Path,
) -> tuple[dict, Optional[dict], ModelConfig, dict[str, torch.Tensor], bool]:
    """Everything in a transformers AST folder: (config.json with defaults, preprocessor settings or None, our
    ModelConfig, our state dict, whether it has the classification head). Errors name the folder."""
    folder = Path(folder)
    if not is_hf_folder(folder):
        raise CheckpointError(f"{folder}: not a transformers AST folder (no {CONFIG} with model_type {MODEL_TYPE!r})")
    cfg = read_hf_config(folder)
    model_cfg = model_config_from_hf(cfg, folder)
    try:
        state, has_head = hf_to_ours(read_hf_weights(folder))
    except WeightMismatchError as e:
        raise CheckpointError(f"{folder}: {e}") from None
    blocks = len({k.split(".")[2] for k in state if k.startswith("encoder.blocks.")})
    if blocks != model_cfg.depth:
        raise CheckpointError(f"{folder}: the weights have {blocks} layers, {CONFIG} says {model_cfg.depth}")
    return cfg, read_feature_settings(folder), model_cfg, state, has_head
