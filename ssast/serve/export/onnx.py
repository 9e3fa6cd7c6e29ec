"""ONNX export of a checkpoint: the normalised fbank (or the waveform) in, the logits (or the embeddings) out, the
feature settings in the metadata.

By default the graph starts at the model's input: the Kaldi filter bank is left to the caller (any Kaldi-compatible
implementation reproduces it), and everything needed to make the input exactly is stored in the model's
``metadata_props`` (:func:`feature_metadata`). With ``input="waveform"`` the filter bank is in the graph
(:mod:`ssast.serve.export.waveform`): 16 kHz samples and their lengths in, so a deployment needs ONNX Runtime and
nothing else. With ``output="embeddings"`` the graph ends at the clip embedding ``ssast embed`` writes (and, with
``tokens``, the token embeddings of ``ssast embed --tokens``): any checkpoint, pretraining ones too. The batch axis is
dynamic (and the sample count of a waveform input); the frame count is the checkpoint's ``audio.target_length``.
Exported with PyTorch's dynamo exporter (``torch.export`` + onnxscript), which writes scaled_dot_product_attention as
plain MatMul/Softmax nodes that every runtime runs.
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
WAVEFORM, LENGTHS = "waveform", "lengths"  # the inputs of a waveform-in graph
EMBEDDING, TOKENS = "embedding", "tokens"  # the outputs of an embeddings graph
INPUTS = (INPUT, WAVEFORM)
OUTPUTS = (OUTPUT, "embeddings")
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


def feature_metadata(meta: CheckpointMeta, audio: AudioConfig, source: str = INPUT, target: str = OUTPUT,
                     tokens: bool = False) -> dict[str, str]:
    """The ONNX metadata_props of an exported model: inputs, outputs, feature settings, normalisation, score function
    and labels."""
    labels = meta.labels or [str(i) for i in range(meta.num_classes)]
    if source == WAVEFORM:
        inputs = (f"{WAVEFORM}: (batch, samples) float32 mono at {audio.sample_rate} Hz, zero-padded at the end; "
                  f"{LENGTHS}: (batch,) int64 real samples per clip; the first {audio.target_length} frames of each "
                  "clip are read")
    else:
        inputs = f"{INPUT}: normalised log-mel filter bank (batch, {audio.target_length}, {audio.num_mel_bins})"
    if target == OUTPUT:
        outputs = f"{OUTPUT}: (batch, {meta.num_classes}) class scores before the " + (
            "sigmoid" if meta.multilabel else "softmax")
    else:
        outputs = f"{EMBEDDING}: (batch, {meta.model.dim}) clip embedding, as ssast embed" + (
            f"; {TOKENS}: (batch, tokens, {meta.model.dim}) token embeddings, as ssast embed --tokens" if tokens else "")
    return {
        "producer": f"ssast {__version__}",
        "input": inputs,
        "output": outputs,
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


class ExportGraph(torch.nn.Module):
    """What the .onnx file computes: [waveform front end ->] model -> logits, or the clip (and token) embeddings."""

    def __init__(self, model: torch.nn.Module, front: torch.nn.Module | None, target: str, tokens: bool) -> None:
        super().__init__()
        self.model, self.front, self.target, self.tokens = model, front, target, tokens

    def forward(self, x: torch.Tensor, lengths: torch.Tensor | None = None):
        if self.front is not None:
            x = self.front(x, lengths)
        if self.target == OUTPUT:
            return self.model(x)
        out = self.model.forward_features(x)
        clip = self.model.forward_head(out, pre_logits=True)  # the pooled embedding of ssast embed
        return (clip, self.model.patch_tokens(out)) if self.tokens else clip


def export_onnx(ckpt: str | Path, out: str | Path, *, input: str = INPUT, output: str = OUTPUT,
                tokens: bool = False, overwrite: bool = False) -> Path:
    """Write checkpoint ``ckpt`` as the ONNX model ``out`` (written atomically, checked with onnx.checker).

    ``input``: "fbank" (the normalised filter bank) or "waveform" (samples + lengths, the fbank in the graph).
    ``output``: "logits" (a classifier's; a pretraining checkpoint is refused: fine-tune it first) or "embeddings"
    (the clip embedding, plus the token embeddings with ``tokens``; any checkpoint). Returns ``out``.
    """
    import onnx

    from ssast.atomic import atomic_write, replaceable, source_id
    from ssast.serve.export.waveform import WaveformFrontEnd
    from ssast.serve.inference import audio_config_of, load_for_inference
    from ssast.models.checkpoint import read_checkpoint_meta

    if input not in INPUTS:
        raise ConfigError(f"--input {input!r}: give one of {', '.join(INPUTS)}")
    if output not in OUTPUTS:
        raise ConfigError(f"--output {output!r}: give one of {', '.join(OUTPUTS)}")
    if tokens and output == OUTPUT:
        raise ConfigError("--tokens: token embeddings come with --output embeddings")
    src = source_id(ckpt)
    replaceable(out, holds=lambda p: p.is_file() and _exported_from(p) is not None, kind="an ssast ONNX export",
                same=lambda p: _exported_from(p) == src, overwrite=overwrite)
    if output == OUTPUT and read_checkpoint_meta(ckpt).kind != "classifier":
        raise CheckpointError(f"{ckpt}: a pretraining checkpoint has no classifier head; fine-tune it first "
                              "(ssast finetune), then export the fine-tuned checkpoint, or export its encoder with "
                              "--output embeddings")
    model, meta = load_for_inference(str(ckpt), torch.device("cpu"), need_head=output == OUTPUT)
    audio = audio_config_of(meta)
    if audio.num_mel_bins != meta.model.input_fdim or audio.target_length > meta.model.input_tdim:
        raise CheckpointError(
            f"{ckpt}: its audio settings ({audio.num_mel_bins} mel bins x {audio.target_length} frames) do not fit "
            f"its model ({meta.model.input_fdim} x at most {meta.model.input_tdim}); the checkpoint is inconsistent"
        )
    front = WaveformFrontEnd(audio) if input == WAVEFORM else None
    graph = ExportGraph(model, front, output, tokens).eval()
    batch = torch.export.Dim("batch")
    # 2 clips, not 1: a batch of 1 would be specialised; samples of both lengths so neither is a constant
    if front is None:
        example = (torch.zeros(2, audio.target_length, audio.num_mel_bins),)
        names, shapes = [INPUT], {"x": {0: batch}}
    else:
        example = (torch.zeros(2, front.samples + 7), torch.tensor([front.samples + 7, 500]))
        names, shapes = [WAVEFORM, LENGTHS], {"x": {0: batch, 1: torch.export.Dim("samples", min=2)},
                                              "lengths": {0: batch}}
    outputs = [OUTPUT] if output == OUTPUT else [EMBEDDING, TOKENS] if tokens else [EMBEDDING]
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore", FutureWarning)  # torch.export's own deprecation notices, nothing to act on
        warnings.filterwarnings("ignore", ".*The axis name")  # lengths' batch axis is the waveform's: one name kept
        program = torch.onnx.export(graph, example, dynamo=True, input_names=names, output_names=outputs,
                                    dynamic_shapes=shapes, verbose=False)
    proto = program.model_proto
    what = "classifier" if output == OUTPUT else "encoder"
    proto.doc_string = f"ssast {what} exported from {Path(ckpt).name}; features: {feature_formula(audio)}"
    for key, value in {**feature_metadata(meta, audio, input, output, tokens), "ssast_source": src}.items():
        proto.metadata_props.add(key=key, value=value)
    if proto.ByteSize() > PROTOBUF_LIMIT:
        raise ConfigError(f"{ckpt}: the model is over 2 GiB, more than one .onnx file can hold")
    onnx.checker.check_model(proto, full_check=True)
    data = proto.SerializeToString()
    atomic_write(out, lambda f: f.write(data))
    return Path(out)
