"""Settings shared by every part of the speed suite: the rows, the constants of the paper's shapes, a
measurement's spec and result, timing, and the command that re-enters ``benchmarks/run.py`` in a fresh process."""
from __future__ import annotations

import platform
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

import torch


ROOT = Path(__file__).resolve().parents[2]
RUN_SCRIPT = ROOT / "benchmarks" / "run.py"


ROWS = (
    "pretrain-authors",
    "pretrain-onepass",
    "pretrain-visible",
    "finetune-step",
    "inference",
    "inference-onnx",
    "inference-onnx-waveform",
    "fbank",
    "loop",
)
PRETRAIN_ROWS = ROWS[:3]
MULTI_MASK_ROWS = ROWS[1:3]  # model.masks_per_clip applies; the authors' row keeps their one mask per pass
ONNX_ROWS = ("inference-onnx", "inference-onnx-waveform")  # ONNX Runtime on the CPU, fp32 only
TRAINING_ROWS = PRETRAIN_ROWS + ("finetune-step",)  # the rows with a backward pass
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
    grad_checkpointing: bool = False  # the encoder blocks recompute their activations in the backward pass
    masks_per_clip: int = 1  # K masked copies of every clip per step (one-pass and visible rows; see model config)


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


def script_command() -> list[str]:
    """The start of a command that runs ``benchmarks/run.py`` in a fresh Python (for rows, peaks and the ONNX export,
    so each one's peak memory is its own)."""
    return [sys.executable, str(RUN_SCRIPT)]
