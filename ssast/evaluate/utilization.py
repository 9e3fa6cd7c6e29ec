"""How close a step runs to the machine: its matrix-product FLOPs, and the machine's own dense matmul peak.

A speed in clips/s says little across machines (the same step runs 1.5x-2x apart on two instances of one cloud
type, and a CPU's bf16/fp32 ratio varies with it). The fraction of the machine's measured matmul peak does carry
over: ``flops_per_clip * clips_per_s / peak``. FLOPs are counted by ``torch.utils.flop_counter`` (matrix products and
attention; element-wise work, norms and the optimiser count as zero, so they show up as a lower fraction), with
PyTorch's CPU flash-attention ops added at PyTorch's own formulas for the GPU kernels (the backward counts the
recomputed scores, 5 products against the forward's 2), so one model counts the same FLOPs on either device and with
either attention backward.
"""
from __future__ import annotations

import statistics
import time
from typing import Callable, Optional

import torch
from torch.utils.flop_counter import FlopCounterMode, sdpa_backward_flop_count, sdpa_flop_count

__all__ = ["PEAK_SIZES", "count_flops", "count_flops_by_op", "fraction_of_peak", "matmul_peak"]

PEAK_SIZES = (1024, 2048, 4096)  # square products: the peak is the best of them (the medians of each)
_aten = torch.ops.aten


def _cpu_attention_flops(query, key, value, *args, out_shape=None, **kwargs) -> int:
    return sdpa_flop_count(query, key, value)


def _cpu_attention_backward_flops(grad_out, query, key, value, *args, out_shape=None, **kwargs) -> int:
    return sdpa_backward_flop_count(grad_out, query, key, value)


_CPU_ATTENTION = {
    _aten._scaled_dot_product_flash_attention_for_cpu: _cpu_attention_flops,
    _aten._scaled_dot_product_flash_attention_for_cpu_backward: _cpu_attention_backward_flops,
}


def count_flops(fn: Callable[[], object]) -> int:
    """Matrix-product FLOPs (2 per multiply-add) of one call of ``fn``, forward and backward alike."""
    return sum(count_flops_by_op(fn).values())


def count_flops_by_op(fn: Callable[[], object]) -> dict[str, int]:
    """:func:`count_flops` split by op ("aten::mm", "aten::bmm", ...: the profiler's names)."""
    with FlopCounterMode(display=False, custom_mapping=_CPU_ATTENTION) as counter:
        fn()
    return {str(op).replace("aten.", "aten::", 1): int(n)
            for op, n in counter.get_flop_counts().get("Global", {}).items()}


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def matmul_peak(
    device: torch.device, dtype: torch.dtype, sizes=PEAK_SIZES, repeats: int = 5, min_seconds: float = 0.2
) -> dict:
    """Dense ``n x n @ n x n`` products in ``dtype`` on ``device``: GFLOP/s (median of ``repeats`` timings, each of
    enough products to last ``min_seconds``) for every size, and the best of them as ``peak_gflops``."""
    gen = torch.Generator().manual_seed(0)
    by_size = {}
    for n in sizes:
        a = torch.randn(n, n, generator=gen).to(device, dtype)
        b = torch.randn(n, n, generator=gen).to(device, dtype)
        a @ b  # first call: allocation, kernel choice
        _sync(device)
        start = time.perf_counter()
        a @ b
        _sync(device)
        per_call = max(time.perf_counter() - start, 1e-6)
        calls = max(1, int(min_seconds / per_call))
        rates = []
        for _ in range(repeats):
            start = time.perf_counter()
            for _ in range(calls):
                a @ b
            _sync(device)
            rates.append(2 * n**3 * calls / (time.perf_counter() - start) / 1e9)
        by_size[str(n)] = round(statistics.median(rates), 1)
        del a, b
    return {"dtype": str(dtype).replace("torch.", ""), "gflops_by_size": by_size,
            "peak_gflops": max(by_size.values())}


def fraction_of_peak(flops_per_clip: Optional[float], clips_per_s: Optional[float], peak_gflops: Optional[float]):
    """(achieved GFLOP/s, fraction of the peak), or (None, None) when a figure is missing."""
    if not flops_per_clip or not clips_per_s or not peak_gflops:
        return None, None
    achieved = flops_per_clip * clips_per_s / 1e9
    return achieved, achieved / peak_gflops
