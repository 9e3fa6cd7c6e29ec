"""ONNX export of a classifier checkpoint: the normalised fbank in, the logits out, the feature settings in the metadata.

The graph starts at the model's input, not at the waveform: the Kaldi filter bank is left to the caller (any
Kaldi-compatible implementation reproduces it), and everything needed to make the input exactly is stored in the
model's ``metadata_props`` (:func:`feature_metadata`). The batch axis is dynamic; the frame count is the checkpoint's
``audio.target_length``. Exported with PyTorch's dynamo exporter (``torch.export`` + onnxscript), which writes
scaled_dot_product_attention as plain MatMul/Softmax nodes that every runtime runs.
"""
from __future__ import annotations

import json
import warnings
from pathlib import Path

import torch

from ssast import __version__
from ssast.config import AudioConfig, ConfigError
from ssast.models.checkpoint import CheckpointMeta
from ssast.models.weightfiles import CheckpointError

INPUT = "fbank"
OUTPUT = "logits"
PROTOBUF_LIMIT = 2**31 - 1  # one .onnx file holds at most 2 GiB (a Base model is about 350 MB)


def feature_formula(audio: AudioConfig) -> str:
    """How to turn a waveform into this model's input, in one line a user can follow with torchaudio or Kaldi."""
    sr, bins, frames = audio.sample_rate, audio.num_mel_bins, audio.target_length
    return (
        f"mono float waveform at {sr} Hz in [-1, 1], its mean removed; fbank = torchaudio.compliance.kaldi.fbank("
        f"wave, htk_compat=True, sample_frequency={sr}, use_energy=False, window_type='hanning', "
        f"num_mel_bins={bins}, dither=0.0, frame_shift=10) (25 ms frames every 10 ms); zero-pad the fbank at the end "
        f"or crop it to {frames} frames; input = (fbank - norm_mean) / (2 * norm_std), shape (batch, {frames}, {bins})"
    )


def feature_metadata(meta: CheckpointMeta, audio: AudioConfig) -> dict[str, str]:
    """The ONNX metadata_props of an exported model: feature settings, normalisation, score function and labels."""
    labels = meta.labels or [str(i) for i in range(meta.num_classes)]
    return {
        "producer": f"ssast {__version__}",
        "input": f"{INPUT}: normalised log-mel filter bank (batch, {audio.target_length}, {audio.num_mel_bins})",
        "output": f"{OUTPUT}: (batch, {meta.num_classes}) class scores before the "
        + ("sigmoid" if meta.multilabel else "softmax"),
        "sample_rate": str(audio.sample_rate),
        "num_mel_bins": str(audio.num_mel_bins),
        "target_length": str(audio.target_length),
        "frame_length_ms": "25",
        "frame_shift_ms": "10",
        "norm_mean": repr(float(audio.norm_mean)),
        "norm_std": repr(float(audio.norm_std)),
        "features": feature_formula(audio),
        "multilabel": "true" if meta.multilabel else "false",
        "scores": "sigmoid" if meta.multilabel else "softmax",
        "labels": json.dumps(labels),
        "label_ids": json.dumps(meta.label_ids),
        "model": json.dumps({k: getattr(meta.model, k) for k in (
            "dim", "depth", "heads", "fshape", "tshape", "fstride", "tstride", "input_fdim", "input_tdim",
            "num_prefix", "pooling", "layer_weights", "projector_dim")}),
    }


def onnx_metadata(path: str | Path) -> dict[str, str]:
    """The metadata_props of an .onnx file as a dict (what ``feature_metadata`` stored), weights not loaded."""
    import onnx

    proto = onnx.load(str(path), load_external_data=False)
    return {p.key: p.value for p in proto.metadata_props}


def _exported_from(path: Path) -> str | None:
    """The ``ssast_source`` of an .onnx file ssast wrote (None for any other file)."""
    try:
        return onnx_metadata(path).get("ssast_source")
    except Exception:  # not an ONNX model at all (onnx raises DecodeError and friends)
        return None


def export_onnx(ckpt: str | Path, out: str | Path, overwrite: bool = False) -> Path:
    """Write classifier checkpoint ``ckpt`` as the ONNX model ``out`` (written atomically, checked with onnx.checker).

    A pretraining checkpoint has no head and is refused: fine-tune it first. Returns ``out``.
    """
    import onnx

    from ssast.atomic import atomic_write, replaceable, source_id
    from ssast.serve.inference import audio_config_of
    from ssast.models.checkpoint import read_checkpoint_meta
    from ssast.models.factory import load_pretrained

    src = source_id(ckpt)
    replaceable(out, holds=lambda p: p.is_file() and _exported_from(p) is not None, kind="an ssast ONNX export",
                same=lambda p: _exported_from(p) == src, overwrite=overwrite)
    if read_checkpoint_meta(ckpt).kind != "classifier":
        raise CheckpointError(f"{ckpt}: a pretraining checkpoint has no classifier head; fine-tune it first "
                              "(ssast finetune), then export the fine-tuned checkpoint")
    model, meta = load_pretrained(ckpt)
    audio = audio_config_of(meta)
    if audio.num_mel_bins != meta.model.input_fdim or audio.target_length > meta.model.input_tdim:
        raise CheckpointError(
            f"{ckpt}: its audio settings ({audio.num_mel_bins} mel bins x {audio.target_length} frames) do not fit "
            f"its model ({meta.model.input_fdim} x at most {meta.model.input_tdim}); the checkpoint is inconsistent"
        )
    example = torch.zeros(2, audio.target_length, audio.num_mel_bins)  # 2, not 1: a batch of 1 would be specialised
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore", FutureWarning)  # torch.export's own deprecation notices, nothing to act on
        program = torch.onnx.export(model, (example,), dynamo=True, input_names=[INPUT], output_names=[OUTPUT],
                                    dynamic_shapes=({0: torch.export.Dim("batch")},), verbose=False)
    proto = program.model_proto
    proto.doc_string = f"ssast classifier exported from {Path(ckpt).name}; features: {feature_formula(audio)}"
    for key, value in {**feature_metadata(meta, audio), "ssast_source": src}.items():
        proto.metadata_props.add(key=key, value=value)
    if proto.ByteSize() > PROTOBUF_LIMIT:
        raise ConfigError(f"{ckpt}: the model is over 2 GiB, more than one .onnx file can hold")
    onnx.checker.check_model(proto, full_check=True)
    data = proto.SerializeToString()
    atomic_write(out, lambda f: f.write(data))
    return Path(out)
