"""The ssast benchmark suite: throughput (clips/s), peak memory, FLOPs and fraction of the matmul peak of every step.

    python benchmarks/run.py [ROW ...] [--size tiny|small|base|custom] [--dim D --depth L --heads H] [--batch N]
        [--tdim 1024] [--tokens patch|frame|both] [--precision fp32 [bf16]] [--compile] [--device cpu|cuda]
        [--repeats 5] [--warmup 2] [--out results.json] [--quick] [--profile ROW]

Rows: pretrain-authors (two passes, two masks, fp32: the authors' behaviour), pretrain-onepass (one pass, one mask),
pretrain-visible (encoder on visible tokens + 2-block decoder), finetune-step and inference (classifier, 16x16 stride
10), inference-onnx (the same classifier exported to ONNX, run by ONNX Runtime on the CPU, fp32), fbank (batched Kaldi fbank of 10 s clips) and loop (the full Trainer pretraining loop on synthetic WebDataset
shards, against the bare step rate at the same settings). A step is forward + backward + fused Adam step on a fixed
random batch. Every row runs in a fresh subprocess so that its peak memory (CUDA max allocated, or the CPU's peak
resident set size) is its own. See benchmarks/README.md for the results table and the exact command lines.
"""
from __future__ import annotations

import argparse
import datetime
import gc
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Callable, Optional

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as a script from a checkout without installing the package
    sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from ssast.train.runtime import peak_memory_mb, rss_peak_mb  # noqa: E402
from ssast.utilization import PEAK_SIZES, count_flops, count_flops_by_op, fraction_of_peak, matmul_peak  # noqa: E402

ROWS = (
    "pretrain-authors",
    "pretrain-onepass",
    "pretrain-visible",
    "finetune-step",
    "inference",
    "inference-onnx",
    "fbank",
    "loop",
)
PRETRAIN_ROWS = ROWS[:3]
TOKEN_SHAPES = {"patch": (16, 16), "frame": (128, 2)}
MASK_FRACTION = 400 / 512  # the released "-400" models: 400 of 512 tokens at 1024 frames
FINETUNE_STRIDE = 10  # 16x16 patches with stride 10: 12 x 101 = 1212 tokens at 1024 frames
NUM_CLASSES = 527  # AudioSet's label count, for the fine-tuning head
FBANK_SECONDS = 10.0
FBANK_FFT = 512  # 25 ms windows at 16 kHz, padded to a power of two
MEL_BINS = 128
RESULT_MARK = "@@BENCH_RESULT@@"
# The authors' code on one H100 (issue 5): Base, batch 24, 128x1024, fp32, clips/s.
PUBLISHED_H100 = {
    ("pretrain", "patch"): 48.0,
    ("pretrain", "frame"): 58.0,
    ("finetune-step", "patch"): 47.0,
    ("inference", "patch"): 141.0,
}


class BenchmarkError(ValueError):
    """A bad benchmark request (unknown row, impossible size, no GPU for --device cuda); the message says what to fix."""


@dataclass
class Spec:
    """One measurement: a row at one tokenization and precision, with every setting needed to rebuild it."""

    row: str
    tokens: str = "patch"
    precision: str = "fp32"
    size: str = "base"
    dim: Optional[int] = None
    depth: Optional[int] = None
    heads: Optional[int] = None
    batch: int = 2
    tdim: int = 1024
    compile: bool = False
    device: str = "cpu"
    repeats: int = 5
    warmup: int = 2
    fbank_batch: int = 16
    loop_steps: int = 60
    threads: int = 0  # 0: torch's default


@dataclass
class Measurement:
    """What timing one step function gives: per-iteration seconds and the peak memory."""

    times: list[float]
    peak_mb: float
    extra: dict = field(default_factory=dict)


# ---------------------------------------------------------------------------------------------------------------
# environment


def device_name(device: torch.device) -> str:
    """GPU name from CUDA, or the CPU model from /proc/cpuinfo (platform's processor string elsewhere)."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def sync(device: torch.device) -> None:
    """Wait for queued GPU work so host timers measure it (no-op on CPU)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_calls(fn: Callable[[], object], warmup: int, repeats: int, device: torch.device) -> list[float]:
    """Seconds of each of ``repeats`` calls after ``warmup`` untimed ones, with the GPU synchronised around each."""
    for _ in range(warmup):
        fn()
    sync(device)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - start)
    return times


# ---------------------------------------------------------------------------------------------------------------
# what each row runs


def model_config(spec: Spec, *, finetune: bool = False):
    """The ModelConfig of a row: size, token shape, input length, and for pretraining the path and mask count."""
    from ssast.config import ModelConfig
    from ssast.models.tokenizer import grid_shape

    fshape, tshape = TOKEN_SHAPES[spec.tokens]
    kw = dict(size=spec.size, dim=spec.dim, depth=spec.depth, heads=spec.heads, fshape=fshape, tshape=tshape,
              input_fdim=MEL_BINS, input_tdim=spec.tdim)
    if finetune:
        kw.update(fstride=FINETUNE_STRIDE, tstride=FINETUNE_STRIDE)
        return ModelConfig(**kw)
    f_rows, t_cols = grid_shape(MEL_BINS, spec.tdim, fshape, tshape, fshape, tshape)
    num_mask = max(1, round(MASK_FRACTION * f_rows * t_cols))  # 400 of 512 at 1024 frames, scaled with tdim
    kw.update(mask_patch=num_mask, two_pass=spec.row == "pretrain-authors",
              pretrain_encoder="visible" if spec.row == "pretrain-visible" else "all")
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
    mask = model.sample_mask(spec.batch, generator=torch.Generator().manual_seed(3)).to(device)
    visible_idx, _ = split_indices(mask, model.num_mask)
    h = torch.randn(spec.batch, enc.num_prefix + visible_idx.shape[1], enc.dim, device=device, requires_grad=True)

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


def export_row_model(spec: Spec, path: str) -> None:
    """Export the inference row's classifier (seed 0, as the row builds it) to ``path`` through ``ssast export``'s
    code path: a checkpoint in a temp folder, then export_checkpoint."""
    from ssast.config import AudioConfig
    from ssast.export import export_checkpoint
    from ssast.models.checkpoint import CheckpointMeta, save_checkpoint

    torch.manual_seed(0)
    model = classifier(spec, torch.device("cpu")).eval()
    x = random_fbank(spec, torch.device("cpu"))
    with torch.inference_mode():
        flops = count_flops(lambda: model(x))
    Path(path + ".flops").write_text(str(flops))  # the ONNX row's FLOPs: the same model's torch forward, fp32
    with tempfile.TemporaryDirectory(prefix="ssast-bench-") as tmp:
        meta = CheckpointMeta(kind="classifier", model=model.cfg, audio=AudioConfig(target_length=spec.tdim))
        save_checkpoint(Path(tmp) / "ckpt", model, meta)
        export_checkpoint(str(Path(tmp) / "ckpt"), path, "onnx")


def onnx_inference_step(spec: Spec, device: torch.device, dtype: Optional[torch.dtype]):
    """(step function, info) for the inference row's model in ONNX Runtime (CPU provider, fp32, torch's thread count).

    The export runs in a child process, so this row's peak memory is ONNX Runtime's, not the exporter's.
    """
    if device.type != "cpu":
        raise BenchmarkError("inference-onnx runs on ONNX Runtime's CPU provider: use --device cpu")
    try:
        import onnxruntime as ort
    except ImportError:
        raise BenchmarkError("inference-onnx needs onnxruntime: pip install -e \".[onnx]\"") from None
    from ssast.export.onnx import INPUT

    options = ort.SessionOptions()
    options.intra_op_num_threads = torch.get_num_threads()  # the torch rows' threads: a like-for-like comparison
    options.inter_op_num_threads = 1
    with tempfile.TemporaryDirectory(prefix="ssast-bench-onnx-") as tmp:
        path = os.path.join(tmp, "model.onnx")
        start = time.perf_counter()
        cmd = [sys.executable, str(Path(__file__).resolve()), "--export-onnx", json.dumps(asdict(spec)), path]
        subprocess.run(cmd, check=True, cwd=str(ROOT), env={**os.environ, "PYTHONPATH": str(ROOT)})
        export_s = time.perf_counter() - start
        size_mb = os.path.getsize(path) / 2**20
        flops = int(Path(path + ".flops").read_text())
        session = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
    x = random_fbank(spec, torch.device("cpu")).numpy()
    cfg = model_config(spec, finetune=True)
    tokens = grid_tokens(cfg)

    def step() -> None:
        session.run(None, {INPUT: x})

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


# ---------------------------------------------------------------------------------------------------------------
# the full training loop on synthetic shards


def write_synthetic_shards(root: Path, clips: int, tdim: int, shards: int) -> Path:
    """Write ``clips`` noisy harmonic clips just long enough for ``tdim`` frames and pack them into FLAC shards."""
    import numpy as np
    import soundfile as sf

    from ssast.audio.fbank import max_samples
    from ssast.data.shard_writer import prepare_shards

    audio = root / "audio"
    audio.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    n = max_samples(tdim)
    t = np.arange(n) / 16000
    for i in range(clips):
        f0 = 100 + 40 * i
        wave = sum(np.sin(2 * np.pi * k * f0 * t) / k for k in range(1, 6)) * 0.2 + 0.05 * rng.standard_normal(n)
        sf.write(str(audio / f"clip{i:04d}.wav"), wave.astype(np.float32), 16000)
    out = root / "shards"
    prepare_shards(str(audio), str(out), shard_size=max(1, -(-clips // shards)), workers=1, progress=False)
    return out


def loop_config(spec: Spec, shard_dir: Path, run_dir: Path):
    """A pretraining Config matching the one-pass row's model, fed from the shards, logging every 20 steps."""
    from ssast.config import AudioConfig, Config, DataConfig, TrainConfig, validate

    m = model_config(replace(spec, row="pretrain-onepass"))
    cfg = Config(
        task="pretrain",
        model=m,
        audio=AudioConfig(target_length=spec.tdim, num_mel_bins=MEL_BINS),
        data=DataConfig(train=[str(shard_dir)], batch_size=spec.batch, num_workers=-1, shuffle_buffer=64),
        train=TrainConfig(steps=spec.loop_steps, device=str(spec.device), precision=spec.precision,
                          compile=spec.compile, run_dir=str(run_dir), log_every=20, ckpt_every=10**9,
                          image_every=0, progress="none"),
    )
    validate(cfg)
    return cfg


def measure_loop(spec: Spec, device: torch.device, dtype: Optional[torch.dtype]) -> Measurement:
    """Bare one-pass step rate, then the Trainer's loop (loading, features, logging) timed between optimiser steps.

    The loop's steps are timed by an optimiser post-step hook: from the end of the warm-up steps (which absorb
    worker start-up, the shuffle buffer filling and compilation) to the end of the last step.
    """
    from ssast.train.engine import Trainer
    from ssast.train.runtime import seed_everything

    bare = measure_step(replace(spec, row="pretrain-onepass"), device, dtype)
    bare_median = statistics.median(bare.times)
    gc.collect()
    warm = min(max(spec.warmup, 3), spec.loop_steps - 2)
    with tempfile.TemporaryDirectory(prefix="ssast-bench-") as tmp:
        clips = max(4 * spec.batch, 16)
        shard_dir = write_synthetic_shards(Path(tmp), clips, spec.tdim, shards=4)
        seed_everything(0)
        trainer = Trainer(loop_config(spec, shard_dir, Path(tmp) / "run"), stream=open(os.devnull, "w"))
        stamps: list[float] = []

        def hook(optimizer, args, kwargs) -> None:
            count = len(stamps) + 1
            if count == warm + 1 or count == spec.loop_steps:
                sync(device)  # only at the two window edges: the loop's own syncs stay as they are
            stamps.append(time.perf_counter())

        handle = trainer.optimizer.register_step_post_hook(hook)
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        trainer.fit()
        handle.remove()
        loop_peak = peak_memory_mb(device)
        workers = trainer.train_loader.loader.num_workers if hasattr(trainer.train_loader, "loader") else None
    if len(stamps) != spec.loop_steps:
        raise RuntimeError(f"the loop ran {len(stamps)} optimiser steps, expected {spec.loop_steps}")
    window = stamps[-1] - stamps[warm - 1]
    steps = spec.loop_steps - warm
    per_step = window / steps
    extra = {
        **bare.extra,
        "bare_clips_per_s": spec.batch / bare_median,
        "bare_median_ms": 1000 * bare_median,
        "loop_steps_timed": steps,
        "loader_workers": workers,
    }
    return Measurement([per_step], loop_peak, extra)


# ---------------------------------------------------------------------------------------------------------------
# one row, in this process


def run_spec(spec: Spec) -> dict:
    """Measure one row in this process and return its JSON record."""
    device = torch.device(spec.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise BenchmarkError("--device cuda: no CUDA device is visible; use --device cpu")
    if spec.threads > 0:
        torch.set_num_threads(spec.threads)
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True  # what the engine's runtime sets for fp32 on GPUs
        torch.backends.cudnn.allow_tf32 = True
    if device.type == "cpu":
        from ssast.train.runtime import tune_cpu_allocator

        tune_cpu_allocator()  # as the engine does on CPU (SSAST_NO_ALLOC_TUNING=1 measures without it)
    base_rss = rss_peak_mb()
    dtype, note = effective_precision(spec, device)
    torch.manual_seed(0)
    if spec.row == "loop":
        m = measure_loop(spec, device, dtype)
    else:
        m = measure_step(spec, device, dtype)
    median = statistics.median(m.times)
    n = clips_per_call(spec)
    precision = "fp32" if spec.row == "fbank" or dtype is None else "bf16"
    record = {
        "name": spec.row,
        "label": issue8_label(spec.row, precision),
        "tokens": None if spec.row == "fbank" else spec.tokens,
        "size": spec.size,
        "dim": model_dims(spec)[0],
        "depth": model_dims(spec)[1],
        "heads": model_dims(spec)[2],
        "batch": n,
        "tdim": spec.tdim,
        "precision": precision,
        "requested_precision": spec.precision,
        "compile": spec.compile and spec.row not in ("fbank", "inference-onnx"),
        "attention_backward": os.environ.get("SSAST_ATTENTION_BACKWARD", "matmul"),  # ssast.models.attention
        "device": device.type,
        "device_name": device_name(device),
        "threads": torch.get_num_threads() if device.type == "cpu" else None,
        "torch": torch.__version__,
        "python": platform.python_version(),
        "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "clips_per_s": n / median,
        "median_ms": 1000 * median,
        "min_ms": 1000 * min(m.times),
        "repeats": len(m.times) if spec.row != "loop" else m.extra.get("loop_steps_timed"),
        "warmup": spec.warmup,
        "peak_mb": m.peak_mb,
        "base_rss_mb": base_rss if device.type == "cpu" else None,
        "flops_per_clip": m.extra["flops"] / n if m.extra.get("flops") else None,
        "gflops": None,  # achieved GFLOP/s and fraction of this run's matmul peak: filled in by add_utilization
        "peak_gflops": None,
        "fraction_of_peak": None,
        "decoder_share": m.extra["decoder_ms"] / (1000 * median) if m.extra.get("decoder_ms") else None,
        "ratio_to_authors": None,
        "ratio_to_bare": None,
        "ratio_to_torch": None,
        "ratio_to_published": None,
        "note": note,
        **m.extra,
    }
    if spec.row == "loop":
        record["ratio_to_bare"] = record["clips_per_s"] / record["bare_clips_per_s"]
    return record


def model_dims(spec: Spec) -> tuple[int, int, int]:
    """(dim, depth, heads) of the row's model after resolving the size."""
    from ssast.config import MODEL_SIZES

    if spec.size == "custom":
        return spec.dim, spec.depth, spec.heads
    d, l, h = MODEL_SIZES[spec.size]
    return spec.dim or d, spec.depth or l, spec.heads or h


def issue8_label(row: str, precision: str) -> str:
    """The (a)-(d) names of issue 8's rows: (a) two-pass fp32, (b) one pass fp32, (c) one pass bf16, (d) visible bf16."""
    if row == "pretrain-authors":
        return "(a)"
    if row == "pretrain-onepass":
        return "(b)" if precision == "fp32" else "(c)"
    if row == "pretrain-visible" and precision == "bf16":
        return "(d)"
    return ""


# ---------------------------------------------------------------------------------------------------------------
# the machine's matmul peak


def measure_peaks(precisions: list[str], device: str, threads: int, quick: bool) -> dict:
    """{precision: matmul_peak record} for this device and thread count, in this process."""
    dev = torch.device(device)
    if threads > 0:
        torch.set_num_threads(threads)
    if dev.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True  # fp32 rows run with TF32 on a GPU (the engine's setting)
    sizes = (256, 512) if quick else ((2048, 4096, 8192) if dev.type == "cuda" else PEAK_SIZES)
    dtypes = {"fp32": torch.float32, "bf16": torch.bfloat16}
    out = {}
    for p in precisions:
        rec = matmul_peak(dev, dtypes[p], sizes, repeats=2 if quick else 5, min_seconds=0.02 if quick else 0.2)
        out[p] = {**rec, "threads": torch.get_num_threads() if dev.type == "cpu" else None,
                  "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds")}
    return out


def run_peaks_in_subprocess(precisions: list[str], args: argparse.Namespace) -> dict:
    """measure_peaks in a fresh process (as the rows run), or {} with a warning if it fails."""
    request = json.dumps({"precisions": precisions, "device": args.device, "threads": args.threads,
                          "quick": args.quick})
    cmd = [sys.executable, str(Path(__file__).resolve()), "--peak", request]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=str(ROOT))
    for line in proc.stdout.splitlines():
        if line.startswith(RESULT_MARK):
            return json.loads(line[len(RESULT_MARK) :])
    print(f"warning: the matmul peak could not be measured: {proc.stderr.strip()[-500:]}", file=sys.stderr)
    return {}


def combine_peaks(before: dict, after: dict) -> dict:
    """The peak of each precision: the higher of the measurements before and after the rows (both kept)."""
    out = {}
    for p in set(before) | set(after):
        runs = [r for r in (before.get(p), after.get(p)) if r]
        best = max(runs, key=lambda r: r["peak_gflops"])
        out[p] = {**best, "before": before.get(p, {}).get("peak_gflops"), "after": after.get(p, {}).get("peak_gflops")}
    return out


def add_utilization(records: list[dict], peaks: dict) -> None:
    """Achieved GFLOP/s and the fraction of the same run's matmul peak of the row's precision, for every row."""
    for r in records:
        peak = peaks.get(r.get("precision"), {}).get("peak_gflops")
        achieved, fraction = fraction_of_peak(r.get("flops_per_clip"), r.get("clips_per_s"), peak)
        r["gflops"], r["peak_gflops"], r["fraction_of_peak"] = achieved, peak, fraction
        r["matmul_peak"] = peaks.get(r.get("precision"))


def peak_lines(peaks: dict) -> list[str]:
    """One line per precision: the peak and every size measured, before and after the rows."""
    lines = []
    for p, rec in sorted(peaks.items()):
        sizes = ", ".join(f"{n}: {g:.0f}" for n, g in rec["gflops_by_size"].items())
        lines.append(f"matmul peak {p}: {rec['peak_gflops']:.0f} GFLOP/s (before the rows "
                     f"{_fmt(rec.get('before'), 0)}, after {_fmt(rec.get('after'), 0)}; "
                     f"n x n products, GFLOP/s by n: {sizes})")
    return lines


# ---------------------------------------------------------------------------------------------------------------
# many rows, each in a fresh subprocess


def run_in_subprocess(spec: Spec, timeout: Optional[float]) -> dict:
    """Run one row in a new Python process (so peak RSS / CUDA peaks are the row's own) and parse its record."""
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", json.dumps(asdict(spec))]
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env, cwd=str(ROOT))
    except subprocess.TimeoutExpired:
        return failed_record(spec, f"timed out after {timeout:.0f} s")
    for line in proc.stdout.splitlines():
        if line.startswith(RESULT_MARK):
            return json.loads(line[len(RESULT_MARK) :])
    tail = (proc.stderr or proc.stdout).strip().splitlines()[-12:]
    return failed_record(spec, f"exit code {proc.returncode}: " + " | ".join(tail))


def failed_record(spec: Spec, error: str) -> dict:
    """A row that could not be measured: its settings and the error, no figures."""
    return {"name": spec.row, "tokens": spec.tokens, "size": spec.size, "batch": clips_per_call(spec),
            "tdim": spec.tdim, "precision": spec.precision, "compile": spec.compile, "device": spec.device,
            "clips_per_s": None, "error": error}


def add_ratios(records: list[dict]) -> None:
    """Fill ratio_to_authors (pretraining rows vs (a) of the same tokens in this run), ratio_to_torch (ONNX Runtime
    vs the torch fp32 inference row of this run) and ratio_to_published."""
    authors = {r["tokens"]: r["clips_per_s"] for r in records if r["name"] == "pretrain-authors" and r["clips_per_s"]}
    torch_fp32 = next((r["clips_per_s"] for r in records
                       if r["name"] == "inference" and r.get("precision") == "fp32" and r.get("clips_per_s")), None)
    for r in records:
        if not r.get("clips_per_s"):
            continue
        if r["name"] in PRETRAIN_ROWS and r["tokens"] in authors:
            r["ratio_to_authors"] = r["clips_per_s"] / authors[r["tokens"]]
        if r["name"] == "inference-onnx" and torch_fp32:
            r["ratio_to_torch"] = r["clips_per_s"] / torch_fp32
        # The issue's H100 figures only compare at their own settings: Base, batch 24, 1024 frames, on a GPU.
        key = ("pretrain" if r["name"] in PRETRAIN_ROWS else r["name"], r["tokens"])
        if (r["device"] == "cuda" and key in PUBLISHED_H100 and r.get("size") == "base" and r["batch"] == 24
                and r["tdim"] == 1024 and r.get("dim") == 768 and r.get("depth") == 12):
            r["ratio_to_published"] = r["clips_per_s"] / PUBLISHED_H100[key]


def _fmt(v, digits: int = 1) -> str:
    if v is None or v == "":
        return "-"
    if isinstance(v, float):
        return f"{v:.{digits}f}"
    return str(v)


def markdown_table(records: list[dict]) -> str:
    """The records as a markdown table (one line per row, failures with their error)."""
    head = ["row", "tokens", "size", "batch", "tdim", "precision", "compile", "clips/s", "median ms", "min ms",
            "peak MB", "GFLOP/clip", "GFLOP/s", "of matmul peak", "ratio"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in records:
        name = r["name"] + (f" {r['label']}" if r.get("label") else "")
        size, tdim = (r["size"], str(r["tdim"])) if r["name"] != "fbank" else ("-", "10 s")  # fbank: model-free
        if r.get("error"):
            cells = [name, _fmt(r.get("tokens")), size, str(r["batch"]), tdim, r["precision"],
                     "yes" if r["compile"] else "no", "failed: " + r["error"][:120], "", "", "", "", "", "", ""]
        else:
            ratio = "-"
            if r.get("ratio_to_bare") is not None:
                ratio = f"{r['ratio_to_bare']:.2f} of bare ({r['bare_clips_per_s']:.1f}/s)"
            elif r.get("ratio_to_authors") is not None:
                ratio = f"{r['ratio_to_authors']:.2f}x (a)"
            elif r.get("ratio_to_torch") is not None:
                ratio = f"{r['ratio_to_torch']:.2f}x torch fp32"
            if r.get("decoder_share") is not None:
                dec = (f"decoder {100 * r['decoder_share']:.0f}% of the time, "
                       f"{100 * r['decoder_flops_per_clip'] / r['flops_per_clip']:.0f}% of the FLOPs")
                ratio = dec if ratio == "-" else f"{ratio}; {dec}"
            if r.get("ratio_to_published") is not None:
                ratio += f"; {r['ratio_to_published']:.1f}x authors' H100"
            cells = [name, _fmt(r.get("tokens")), size, str(r["batch"]), tdim, r["precision"],
                     "yes" if r["compile"] else "no", _fmt(r["clips_per_s"], 2), _fmt(r["median_ms"]),
                     _fmt(r["min_ms"]), _fmt(r["peak_mb"], 0),
                     _fmt(r["flops_per_clip"] / 1e9 if r.get("flops_per_clip") else None, 1), _fmt(r.get("gflops"), 0),
                     f"{100 * r['fraction_of_peak']:.0f}%" if r.get("fraction_of_peak") else "-", ratio]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------------------------
# planning from the command line


def default_precisions(device: torch.device) -> list[str]:
    """bf16 on GPUs (issue 5's targets); on a CPU fp32 and bf16 side by side when it runs bf16 natively."""
    from ssast.train.runtime import cpu_supports_bf16

    if device.type == "cuda":
        return ["bf16"]
    return ["fp32", "bf16"] if cpu_supports_bf16() else ["fp32"]


def plan(args: argparse.Namespace) -> list[Spec]:
    """Every (row, tokens, precision) to measure, in table order; the authors' row is fp32 only, fbank once."""
    device = torch.device(args.device)
    quick = args.quick
    size = args.size or ("tiny" if quick else "base")
    if size == "custom" and not (args.dim and args.depth and args.heads):
        raise BenchmarkError("--size custom needs --dim, --depth and --heads")
    dim, depth, heads = args.dim, args.depth, args.heads
    if size != "custom":
        from ssast.config import MODEL_SIZES

        d, _, h = MODEL_SIZES[size]
        if (dim or d) % (heads or h):
            raise BenchmarkError(f"--dim {dim or d} is not divisible by --heads {heads or h}")
    elif dim % heads:
        raise BenchmarkError(f"--dim {dim} is not divisible by --heads {heads}")
    tdim = args.tdim or (128 if quick else 1024)
    if tdim < 16:
        raise BenchmarkError(f"--tdim {tdim}: needs at least 16 frames (one 16x16 patch)")
    batch = args.batch or (2 if quick or device.type == "cpu" else 24)
    precisions = args.precision or default_precisions(device)
    tokens = ["patch", "frame"] if args.tokens == "both" else [args.tokens]
    rows = args.rows or list(ROWS)
    unknown = [r for r in rows if r not in ROWS]
    if unknown:
        raise BenchmarkError(f"unknown row {unknown[0]!r}; rows are: {', '.join(ROWS)}")
    base = Spec(
        row="",
        size=size,
        dim=dim,
        depth=depth,
        heads=heads,
        batch=batch,
        tdim=tdim,
        compile=args.compile,
        device=args.device,
        repeats=args.repeats or (2 if quick else 5),
        warmup=args.warmup if args.warmup is not None else (1 if quick else 2),
        fbank_batch=args.fbank_batch or (2 if quick else (256 if device.type == "cuda" else 16)),
        loop_steps=args.loop_steps or (25 if quick else (200 if device.type == "cuda" else 60)),
        threads=args.threads,
    )
    specs: list[Spec] = []
    for row in ROWS:  # table order, whatever order the rows were named in
        if row not in rows:
            continue
        if row == "fbank":
            specs.append(replace(base, row=row, tokens="patch", precision="fp32"))
            continue
        if row == "inference-onnx" and row not in (args.rows or []) and not onnx_row_available(device):
            continue  # not asked for by name: left out where it cannot run (a GPU run, or no onnxruntime)
        row_tokens = tokens if row in PRETRAIN_ROWS or row == "loop" else ["patch"]
        row_precisions = ["fp32"] if row in ("pretrain-authors", "inference-onnx") else precisions
        for t in row_tokens:
            for p in row_precisions:
                specs.append(replace(base, row=row, tokens=t, precision=p))
    return specs


def onnx_row_available(device: torch.device) -> bool:
    """Whether the inference-onnx row can run: a CPU run with onnxruntime, onnx and onnxscript installed."""
    import importlib.util

    modules = ("onnxruntime", "onnx", "onnxscript")
    return device.type == "cpu" and all(importlib.util.find_spec(m) is not None for m in modules)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="benchmarks/run.py",
        description="Throughput (clips/s) and peak memory of ssast's pretraining, fine-tuning, inference, fbank "
        "and training-loop steps; writes a JSON list of rows and prints a markdown table.",
    )
    p.add_argument("rows", nargs="*", metavar="ROW", help=f"rows to run (default: all): {', '.join(ROWS)}")
    p.add_argument("--size", choices=["tiny", "small", "base", "custom"], help="model size (default base; tiny with --quick)")
    p.add_argument("--dim", type=int, help="embedding width (required for custom; overrides a named size)")
    p.add_argument("--depth", type=int, help="encoder blocks (required for custom; overrides a named size)")
    p.add_argument("--heads", type=int, help="attention heads (required for custom; overrides a named size)")
    p.add_argument("--batch", type=int, help="clips per step (default 24 on a GPU, 2 on the CPU)")
    p.add_argument("--tdim", type=int, help="input frames (default 1024; 128 with --quick)")
    p.add_argument("--tokens", choices=["patch", "frame", "both"], default="both",
                   help="pretraining tokens: 16x16 patches, 128x2 frames, or both (default)")
    p.add_argument("--precision", nargs="+", choices=["fp32", "bf16"],
                   help="one or more; default bf16 on a GPU, 'fp32 bf16' on a CPU with native bf16. "
                   "pretrain-authors is always fp32")
    p.add_argument("--compile", action="store_true", help="wrap the model in torch.compile (not the authors' row)")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", choices=["cpu", "cuda"])
    p.add_argument("--repeats", type=int, help="timed iterations per row; the median is reported (default 5)")
    p.add_argument("--warmup", type=int, help="untimed iterations first (default 2)")
    p.add_argument("--fbank-batch", type=int, help="10 s clips per fbank call (default 256 on a GPU, 16 on the CPU)")
    p.add_argument("--loop-steps", type=int, help="optimiser steps of the loop row (default 200 GPU, 60 CPU)")
    p.add_argument("--threads", type=int, default=0, help="CPU threads for torch (default: torch's choice)")
    p.add_argument("--out", default="results.json", help="JSON file for the rows (default results.json)")
    p.add_argument("--quick", action="store_true",
                   help="CI size: tiny model, tdim 128, batch 2, repeats 2, warmup 1 (explicit flags still win)")
    p.add_argument("--timeout", type=float, default=3600.0, help="seconds allowed per row before it is marked failed")
    p.add_argument("--profile", metavar="ROW", help="profile a few steps of ROW (first tokens and precision) instead")
    p.add_argument("--child", help=argparse.SUPPRESS)
    p.add_argument("--export-onnx", nargs=2, metavar=("SPEC", "PATH"), help=argparse.SUPPRESS)
    p.add_argument("--peak", help=argparse.SUPPRESS)
    return p


# ---------------------------------------------------------------------------------------------------------------
# profiling


def profile(spec: Spec, top: int = 15) -> str:
    """torch.profiler over a few steps of one row; returns the table of the ``top`` ops by self CPU (or CUDA) time."""
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    device = torch.device(spec.device)
    if spec.threads > 0:
        torch.set_num_threads(spec.threads)
    dtype, _ = effective_precision(spec, device)
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    if spec.row == "loop":
        from ssast.train.engine import Trainer

        with tempfile.TemporaryDirectory(prefix="ssast-prof-") as tmp:
            shard_dir = write_synthetic_shards(Path(tmp), max(4 * spec.batch, 16), spec.tdim, shards=4)
            trainer = Trainer(loop_config(spec, shard_dir, Path(tmp) / "run"), stream=open(os.devnull, "w"))
            with torch_profile(activities=activities, acc_events=True) as prof:
                trainer.fit()
    else:
        step, _ = STEP_BUILDERS[spec.row](spec, device, dtype)
        flops = count_flops_by_op(step)
        time_calls(step, max(spec.warmup, 1), 0, device)
        with torch_profile(activities=activities, acc_events=True) as prof:
            for _ in range(max(3, spec.repeats)):
                step()
            sync(device)
    sort = "self_device_time_total" if device.type == "cuda" else "self_cpu_time_total"
    averages = prof.key_averages()
    steps = 1 if spec.row == "loop" else max(3, spec.repeats)
    flops = {} if spec.row == "loop" else flops
    return averages.table(sort_by=sort, row_limit=top) + "\n" + category_table(averages, steps, device, flops)


# Where a step's time goes, by kind of op (self times, so nothing is counted twice).
OP_CATEGORIES = (
    ("matrix products of the linear layers", ("aten::mm", "aten::addmm", "aten::matmul", "aten::linear",
                                             "aten::convolution", "aten::mkldnn")),
    ("attention: flash kernel and the backward's products", ("aten::bmm", "aten::baddbmm", "aten::_scaled_dot_product",
                                                            "aten::_flash_attention", "aten::_efficient_attention")),
    ("dtype casts and layout copies", ("aten::copy_", "aten::_to_copy", "aten::to", "aten::contiguous", "aten::clone")),
    ("optimiser", ("aten::_fused_adam", "aten::_fused_adamw", "aten::_foreach")),
    ("layer norms and GELU", ("aten::native_layer_norm", "aten::layer_norm", "aten::gelu")),
    ("other element-wise and reductions (residual adds, softmax exp, loss, gradient sums)",
     ("aten::add", "aten::mul", "aten::exp", "aten::sum", "aten::sub", "aten::div", "aten::neg", "aten::mean",
      "aten::_log_softmax", "aten::_softmax", "aten::mse_loss", "aten::pow", "aten::relu", "aten::threshold",
      "aten::where", "aten::fill_", "aten::zero_", "aten::sqrt", "aten::argmax", "aten::eq")),
)


def op_category(name: str) -> str:
    for label, prefixes in OP_CATEGORIES:
        if name.startswith(prefixes):
            return label
    return "everything else (gathers, scatters, masks, concatenation, allocation, autograd bookkeeping)"


def category_table(averages, steps: int, device: torch.device, flops: Optional[dict] = None) -> str:
    """Self time per step by category of op, as a markdown table (the 'where the time goes' of a row); with the
    step's FLOPs by op (:func:`ssast.utilization.count_flops_by_op`), the GFLOP/s of each category that has FLOPs."""
    attr = "self_device_time_total" if device.type == "cuda" else "self_cpu_time_total"
    totals: dict[str, float] = {}
    work: dict[str, int] = {}
    for event in averages:
        totals[op_category(event.key)] = totals.get(op_category(event.key), 0.0) + getattr(event, attr)
    for op, n in (flops or {}).items():
        work[op_category(op)] = work.get(op_category(op), 0) + n
    whole = sum(totals.values()) or 1.0
    lines = ["| where the time goes (self time, profiled) | ms / step | share | GFLOP/s |", "|---|---|---|---|"]
    for label, us in sorted(totals.items(), key=lambda kv: -kv[1]):
        rate = f"{work[label] * steps / us / 1e3:.0f}" if work.get(label) and us else ""
        lines.append(f"| {label} | {us / 1000 / steps:.0f} | {100 * us / whole:.0f}% | {rate} |")
    rate = f"{sum(work.values()) * steps / whole / 1e3:.0f}" if work else ""
    lines.append(f"| all | {whole / 1000 / steps:.0f} | 100% | {rate} |")
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------------------------


def main(argv: Optional[list[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    if args.export_onnx:  # the inference-onnx row's export, in its own process
        export_row_model(Spec(**json.loads(args.export_onnx[0])), args.export_onnx[1])
        return 0
    if args.peak:  # the matmul peaks in this (fresh) process
        request = json.loads(args.peak)
        print(RESULT_MARK + json.dumps(measure_peaks(**request)), flush=True)
        return 0
    if args.child:  # one row in this (fresh) process; the parent reads the marked line
        record = run_spec(Spec(**json.loads(args.child)))
        print(RESULT_MARK + json.dumps(record), flush=True)
        return 0
    try:
        if args.device == "cuda" and not torch.cuda.is_available():
            raise BenchmarkError("--device cuda: no CUDA device is visible; use --device cpu")
        if args.profile:
            if args.profile not in ROWS:
                raise BenchmarkError(f"--profile {args.profile!r}: not a row; rows are: {', '.join(ROWS)}")
            args.rows = [args.profile]
            spec = plan(args)[0]
            print(f"profile of {spec.row} ({spec.tokens}, {spec.precision}, {spec.size}, batch {spec.batch}, "
                  f"tdim {spec.tdim}, {spec.device}):")
            print(profile(spec))
            return 0
        specs = plan(args)
    except BenchmarkError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    precisions = sorted({"fp32" if s.row in ("pretrain-authors", "fbank", "inference-onnx") else s.precision
                         for s in specs})
    print(f"matmul peak ({', '.join(precisions)}) ...", end=" ", flush=True, file=sys.stderr)
    peaks_before = run_peaks_in_subprocess(precisions, args)
    print(", ".join(f"{p} {r['peak_gflops']:.0f} GFLOP/s" for p, r in peaks_before.items()), file=sys.stderr)
    records = []
    for i, spec in enumerate(specs, 1):
        label = f"[{i}/{len(specs)}] {spec.row} {spec.tokens if spec.row != 'fbank' else ''} {spec.precision}"
        print(label.replace("  ", " "), "...", end=" ", flush=True, file=sys.stderr)
        start = time.perf_counter()
        record = run_in_subprocess(spec, args.timeout)
        took = time.perf_counter() - start
        status = f"{record['clips_per_s']:.2f} clips/s" if record.get("clips_per_s") else record.get("error", "")
        print(f"{status} ({took:.0f} s)", file=sys.stderr, flush=True)
        records.append(record)
    peaks = combine_peaks(peaks_before, run_peaks_in_subprocess(precisions, args))
    add_ratios(records)
    add_utilization(records, peaks)
    out = Path(args.out)
    if out.parent != Path(""):
        out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(records, indent=2) + "\n")
    first = next((r for r in records if not r.get("error")), None)
    if first:
        print(f"\n{first['device_name']}, torch {first['torch']}, {first['date']}, threads {first.get('threads')}")
    print("\n".join(peak_lines(peaks)))
    print(markdown_table(records))
    print(f"\nwrote {out}")
    return 1 if any(r.get("error") for r in records) else 0


if __name__ == "__main__":
    sys.exit(main())
