"""What each row runs: the step function (forward, backward, optimiser step; or inference, ONNX Runtime, fbank) of
one row at one spec, with its FLOPs and extra facts."""
from __future__ import annotations

import json
import math
import os
import statistics
import subprocess
import tempfile
import time
from dataclasses import asdict
from pathlib import Path
from typing import Callable, Optional

import torch

from ssast.train.runtime import peak_memory_mb
from ssast.evaluate.utilization import count_flops
from speed.common import (
    FBANK_FFT, FBANK_SECONDS, FINETUNE_STRIDE, MASK_FRACTION, MEL_BINS, MULTI_MASK_ROWS, NUM_CLASSES, ROOT, TOKEN_SHAPES,
    BenchmarkError, Measurement, script_command, Spec, time_calls,
)


def model_config(spec: Spec, *, finetune: bool = False):
    """The ModelConfig of a row: size, token shape, input length, and for pretraining the path and mask count."""
    from ssast.config import ModelConfig
    from ssast.models.tokenizer import grid_shape

    fshape, tshape = TOKEN_SHAPES[spec.tokens]
    kw = dict(size=spec.size, dim=spec.dim, depth=spec.depth, heads=spec.heads, fshape=fshape, tshape=tshape,
              input_fdim=MEL_BINS, input_tdim=spec.tdim, grad_checkpointing=spec.grad_checkpointing)
    if finetune:
        kw.update(fstride=FINETUNE_STRIDE, tstride=FINETUNE_STRIDE)
        return ModelConfig(**kw)
    f_rows, t_cols = grid_shape(MEL_BINS, spec.tdim, fshape, tshape, fshape, tshape)
    num_mask = max(1, round(MASK_FRACTION * f_rows * t_cols))  # 400 of 512 at 1024 frames, scaled with tdim
    kw.update(mask_patch=num_mask, two_pass=spec.row == "pretrain-authors",
              pretrain_encoder="visible" if spec.row == "pretrain-visible" else "all",
              masks_per_clip=spec.masks_per_clip if spec.row in MULTI_MASK_ROWS else 1)
    return ModelConfig(**kw)


def effective_precision(spec: Spec, device: torch.device) -> tuple[Optional[torch.dtype], str]:
    """Autocast dtype for the row (the authors' row is always fp32), and a note when bf16 was not available."""
    from ssast.train.runtime import resolve_precision

    if spec.row == "pretrain-authors":
        return None, ""
    return resolve_precision(spec.precision, device)


def random_fbank(spec: Spec, device: torch.device) -> torch.Tensor:
    """A fixed (batch, tdim, 128) batch with the spread of normalised fbanks ((x - mean) / (2 std) has std ~0.5)."""
    gen = torch.Generator().manual_seed(0)
    return (0.5 * torch.randn(spec.batch, spec.tdim, MEL_BINS, generator=gen)).to(device)


def pretrain_step(spec: Spec, device: torch.device, dtype: Optional[torch.dtype]):
    """(step function, info) for one pretraining step: forward, both losses, backward, fused Adam step."""
    from ssast.config import OptimConfig
    from ssast.models.pretrain import build_pretrain_model
    from ssast.train.optim import build_optimizer
    from ssast.train.runtime import Runtime

    cfg = model_config(spec)
    model = build_pretrain_model(cfg).to(device).train()
    opt = build_optimizer(model, OptimConfig(), device)
    rt = Runtime(device, dtype)
    x = random_fbank(spec, device)
    gen = torch.Generator(device).manual_seed(0)  # masks drawn on the device, as in the engine

    def make_step(net: torch.nn.Module) -> Callable[[], None]:
        def step() -> None:
            with rt.autocast():
                out = net(x, generator=gen)
            out.loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)

        return step

    n = model.encoder.num_patches
    info = {"num_tokens": n, "num_masked": model.num_mask, "params_m": _params_m(model),
            "encoder_tokens": n - model.num_mask if model.visible else n, "flops": count_flops(make_step(model))}
    if model.visible:
        info.update(decoder_cost(model, spec, rt, device))
    return make_step(torch.compile(model) if spec.compile else model), info


def decoder_cost(model, spec: Spec, rt, device: torch.device) -> dict:
    """The visible-token path's decoder alone (forward + backward at this row's shapes, eager): its FLOPs per clip
    and its median time, to state the decoder's share of the step."""
    from ssast.models.pretrain import split_indices

    enc = model.encoder
    copies = spec.batch * model.cfg.masks_per_clip  # the decoder fills in every masked copy
    mask = model.sample_mask(copies, generator=torch.Generator().manual_seed(3)).to(device)
    visible_idx, _ = split_indices(mask, model.num_mask)
    h = torch.randn(copies, enc.num_prefix + visible_idx.shape[1], enc.dim, device=device, requires_grad=True)

    def run() -> None:
        with rt.autocast():
            out = model.decoder(h, visible_idx, mask, enc.grid)
        out.float().square().mean().backward()

    flops = count_flops(run)
    times = time_calls(run, 1, 3, device)
    model.zero_grad(set_to_none=True)
    return {"decoder_flops_per_clip": flops / spec.batch, "decoder_ms": 1000 * statistics.median(times)}


def classifier(spec: Spec, device: torch.device):
    """The fine-tuning classifier at 16x16 stride 10, randomly initialised, on the device."""
    from ssast.models.factory import build_classifier

    model, _ = build_classifier(model_config(spec, finetune=True), NUM_CLASSES, "scratch")
    return model.to(device)


def classifier_info(model: torch.nn.Module, eager_step: Callable[[], None]) -> dict:
    """Tokens, parameters and the FLOPs of one eager call of a classifier row's step."""
    return {"num_tokens": model.encoder.num_patches, "params_m": _params_m(model), "flops": count_flops(eager_step)}


def finetune_step(spec: Spec, device: torch.device, dtype: Optional[torch.dtype]):
    """(step function, info) for one classifier training step with BCE on random multi-hot targets."""
    from ssast.config import OptimConfig
    from ssast.train.optim import build_optimizer
    from ssast.train.runtime import Runtime

    model = classifier(spec, device).train()
    opt = build_optimizer(model, OptimConfig(), device)
    rt = Runtime(device, dtype)
    x = random_fbank(spec, device)
    gen = torch.Generator().manual_seed(1)
    targets = (torch.rand(spec.batch, NUM_CLASSES, generator=gen) < 0.02).float().to(device)

    def make_step(net: torch.nn.Module) -> Callable[[], None]:
        def step() -> None:
            with rt.autocast():
                logits = net(x).float()
                loss = torch.nn.functional.binary_cross_entropy_with_logits(logits, targets)
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)

        return step

    info = classifier_info(model, make_step(model))
    return make_step(torch.compile(model) if spec.compile else model), info


def inference_step(spec: Spec, device: torch.device, dtype: Optional[torch.dtype]):
    """(step function, info) for a classifier forward pass without autograd (evaluation / prediction)."""
    from ssast.train.runtime import Runtime

    model = classifier(spec, device).eval()
    rt = Runtime(device, dtype)
    x = random_fbank(spec, device)

    def make_step(net: torch.nn.Module) -> Callable[[], None]:
        def step() -> None:
            with torch.inference_mode(), rt.autocast():
                net(x)

        return step

    info = classifier_info(model, make_step(model))
    return make_step(torch.compile(model) if spec.compile else model), info


def waveform_batch(spec: Spec) -> tuple[torch.Tensor, torch.Tensor]:
    """A fixed (batch, samples) batch of 16 kHz noise exactly as long as the model reads, and its lengths."""
    from ssast.audio.fbank import max_samples

    gen = torch.Generator().manual_seed(0)
    n = max_samples(spec.tdim)
    return 0.1 * torch.randn(spec.batch, n, generator=gen), torch.full((spec.batch,), n, dtype=torch.long)


def export_row_model(spec: Spec, path: str) -> None:
    """Export the inference row's classifier (seed 0, as the row builds it) to ``path`` through ``ssast export``'s
    code path: a checkpoint in a temp folder, then export_checkpoint; the waveform row with the fbank in the graph."""
    from ssast.config import AudioConfig
    from ssast.serve.export import export_checkpoint
    from ssast.serve.export.waveform import WaveformFrontEnd
    from ssast.models.checkpoint import CheckpointMeta, save_checkpoint

    torch.manual_seed(0)
    model = classifier(spec, torch.device("cpu")).eval()
    audio = AudioConfig(target_length=spec.tdim)
    waveform = spec.row == "inference-onnx-waveform"
    with torch.inference_mode():
        if waveform:  # the graph's FLOPs: the front end's DFT and mel products, then the model
            front, (wave, lengths) = WaveformFrontEnd(audio), waveform_batch(spec)
            flops = count_flops(lambda: model(front(wave, lengths)))
        else:
            x = random_fbank(spec, torch.device("cpu"))
            flops = count_flops(lambda: model(x))
    Path(path + ".flops").write_text(str(flops))  # the ONNX row's FLOPs: the same computation in torch, fp32
    with tempfile.TemporaryDirectory(prefix="ssast-bench-") as tmp:
        meta = CheckpointMeta(kind="classifier", model=model.cfg, audio=audio)
        save_checkpoint(Path(tmp) / "ckpt", model, meta)
        export_checkpoint(str(Path(tmp) / "ckpt"), path, "onnx", input="waveform" if waveform else "fbank")


def onnx_inference_step(spec: Spec, device: torch.device, dtype: Optional[torch.dtype]):
    """(step function, info) for the inference row's model in ONNX Runtime (CPU provider, fp32, torch's thread count):
    fed the normalised fbank, or (inference-onnx-waveform) the clips' samples with the fbank in the graph.

    The export runs in a child process, so this row's peak memory is ONNX Runtime's, not the exporter's.
    """
    if device.type != "cpu":
        raise BenchmarkError(f"{spec.row} runs on ONNX Runtime's CPU provider: use --device cpu")
    try:
        import onnxruntime as ort
    except ImportError:
        raise BenchmarkError(f"{spec.row} needs onnxruntime: pip install -e \".[onnx]\"") from None
    from ssast.serve.export.onnx import INPUT, LENGTHS, WAVEFORM

    options = ort.SessionOptions()
    options.intra_op_num_threads = torch.get_num_threads()  # the torch rows' threads: a like-for-like comparison
    options.inter_op_num_threads = 1
    with tempfile.TemporaryDirectory(prefix="ssast-bench-onnx-") as tmp:
        path = os.path.join(tmp, "model.onnx")
        start = time.perf_counter()
        cmd = [*script_command(), "--export-onnx", json.dumps(asdict(spec)), path]
        subprocess.run(cmd, check=True, cwd=str(ROOT), env={**os.environ, "PYTHONPATH": str(ROOT)})
        export_s = time.perf_counter() - start
        size_mb = os.path.getsize(path) / 2**20
        flops = int(Path(path + ".flops").read_text())
        session = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
    if spec.row == "inference-onnx-waveform":
        wave, lengths = waveform_batch(spec)
        feeds = {WAVEFORM: wave.numpy(), LENGTHS: lengths.numpy()}
    else:
        feeds = {INPUT: random_fbank(spec, torch.device("cpu")).numpy()}
    cfg = model_config(spec, finetune=True)
    tokens = grid_tokens(cfg)

    def step() -> None:
        session.run(None, feeds)

    return step, {"num_tokens": tokens, "runtime": f"onnxruntime {ort.__version__}", "export_s": round(export_s, 1),
                  "onnx_mb": round(size_mb, 1), "flops": flops}


def grid_tokens(cfg) -> int:
    """Tokens of a model config's grid."""
    from ssast.models.tokenizer import grid_shape

    f, t = grid_shape(cfg.input_fdim, cfg.input_tdim, cfg.fshape, cfg.tshape, cfg.fstride, cfg.tstride)
    return f * t


def fbank_step(spec: Spec, device: torch.device, dtype: Optional[torch.dtype]):
    """(step function, info) for the batched Kaldi fbank of ``fbank_batch`` 10 s clips (always float32)."""
    from ssast.audio.fbank import kaldi_fbank

    gen = torch.Generator().manual_seed(2)
    wave = (0.1 * torch.randn(spec.fbank_batch, int(FBANK_SECONDS * 16000), generator=gen)).to(device)
    frames = kaldi_fbank(wave[:1]).shape[1]

    def step() -> None:
        kaldi_fbank(wave, num_mel_bins=MEL_BINS)

    # The flop counter sees the mel product only; add each frame's 512-point real FFT at the usual 2.5 n log2 n.
    fft_flops = spec.fbank_batch * frames * 2.5 * FBANK_FFT * math.log2(FBANK_FFT)
    return step, {"frames": frames, "seconds": FBANK_SECONDS, "flops": int(count_flops(step) + fft_flops)}


STEP_BUILDERS = {
    "pretrain-authors": pretrain_step,
    "pretrain-onepass": pretrain_step,
    "pretrain-visible": pretrain_step,
    "finetune-step": finetune_step,
    "inference": inference_step,
    "inference-onnx": onnx_inference_step,
    "inference-onnx-waveform": onnx_inference_step,
    "fbank": fbank_step,
}


def _params_m(model: torch.nn.Module) -> float:
    return round(sum(p.numel() for p in model.parameters()) / 1e6, 2)


def clips_per_call(spec: Spec) -> int:
    """Clips one timed call processes (the fbank row has its own batch)."""
    return spec.fbank_batch if spec.row == "fbank" else spec.batch


def measure_step(spec: Spec, device: torch.device, dtype: Optional[torch.dtype]) -> Measurement:
    """Build the row's step, reset the peak counters, warm up, time ``repeats`` calls."""
    step, info = STEP_BUILDERS[spec.row](spec, device, dtype)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    first = time_calls(step, 0, 1, device)[0]  # with --compile: the compilation
    times = time_calls(step, max(spec.warmup - 1, 0), spec.repeats, device)
    return Measurement(times, peak_memory_mb(device), {**info, "first_call_s": first})
