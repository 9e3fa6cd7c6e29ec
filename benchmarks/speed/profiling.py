"""``--profile ROW``: torch.profiler over a few steps, and self time by kind of op."""
from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Optional

import torch

from ssast.evaluate.utilization import count_flops_by_op
from speed.common import Spec, sync, time_calls
from speed.loop import loop_config, write_synthetic_shards
from speed.rows import STEP_BUILDERS, effective_precision


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
    step's FLOPs by op (:func:`ssast.evaluate.utilization.count_flops_by_op`), the GFLOP/s of each category that has FLOPs."""
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
