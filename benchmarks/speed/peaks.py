"""The machine's dense matmul peak per precision, measured in a fresh process before and after the rows, and each
row's achieved GFLOP/s and fraction of that peak."""
from __future__ import annotations

import argparse
import datetime
import json
import os
import subprocess
import sys

import torch

from ssast.evaluate.utilization import PEAK_SIZES, fraction_of_peak, matmul_peak
from speed.common import RESULT_MARK, ROOT, script_command
from speed.report import _fmt


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
    cmd = [*script_command(), "--peak", request]
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
