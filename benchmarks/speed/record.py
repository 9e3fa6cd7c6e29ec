"""One row's JSON record: measured in this process (``--child``), or in a fresh process so that its peak memory is
its own."""
from __future__ import annotations

import datetime
import json
import os
import platform
import statistics
import subprocess
from dataclasses import asdict
from typing import Optional

import torch

from ssast.train.runtime import rss_peak_mb
from speed.common import (
    MULTI_MASK_ROWS, ONNX_ROWS, RESULT_MARK, ROOT, TRAINING_ROWS, BenchmarkError, device_name, script_command, Spec,
)
from speed.loop import measure_loop
from speed.rows import clips_per_call, effective_precision, measure_step


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
        "compile": spec.compile and spec.row not in ("fbank", *ONNX_ROWS),
        "grad_checkpointing": spec.grad_checkpointing and spec.row in TRAINING_ROWS,
        "attention_backward": os.environ.get("SSAST_ATTENTION_BACKWARD", "matmul"),  # ssast.models.attention
        "device": device.type,
        "device_name": device_name(device),
        "threads": torch.get_num_threads() if device.type == "cpu" else None,
        "torch": torch.__version__,
        "python": platform.python_version(),
        "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "clips_per_s": n / median,  # loader clips: with K masks per clip the objectives see K x as many copies
        "masks_per_clip": spec.masks_per_clip if spec.row in MULTI_MASK_ROWS else 1,
        "masked_copies_per_s": n / median * (spec.masks_per_clip if spec.row in MULTI_MASK_ROWS else 1),
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
        "ratio_to_fbank_onnx": None,
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


def run_in_subprocess(spec: Spec, timeout: Optional[float]) -> dict:
    """Run one row in a new Python process (so peak RSS / CUDA peaks are the row's own) and parse its record."""
    cmd = [*script_command(), "--child", json.dumps(asdict(spec))]
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
