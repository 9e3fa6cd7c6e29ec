"""From the command line to the list of specs to measure."""
from __future__ import annotations

import argparse
from dataclasses import replace

import torch

from speed.common import MULTI_MASK_ROWS, ONNX_ROWS, PRETRAIN_ROWS, ROWS, TRAINING_ROWS, BenchmarkError, Spec


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
    if any(k < 1 for k in args.masks_per_clip):
        raise BenchmarkError(f"--masks-per-clip {min(args.masks_per_clip)}: K must be at least 1")
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
        if row in ONNX_ROWS and row not in (args.rows or []) and not onnx_row_available(device):
            continue  # not asked for by name: left out where it cannot run (a GPU run, or no onnxruntime)
        row_tokens = tokens if row in PRETRAIN_ROWS or row == "loop" else ["patch"]
        row_precisions = ["fp32"] if row in ("pretrain-authors", *ONNX_ROWS) else precisions
        checkpointing = {"off": [False], "on": [True], "both": [False, True]}[args.grad_checkpointing]
        for t in row_tokens:
            for p in row_precisions:
                for ckpt in checkpointing if row in TRAINING_ROWS else [False]:
                    for k in args.masks_per_clip if row in MULTI_MASK_ROWS else [1]:
                        specs.append(replace(base, row=row, tokens=t, precision=p, grad_checkpointing=ckpt,
                                             masks_per_clip=k))
    return specs


def onnx_row_available(device: torch.device) -> bool:
    """Whether the ONNX rows can run: a CPU run with onnxruntime, onnx and onnxscript installed."""
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
    p.add_argument("--grad-checkpointing", choices=["off", "on", "both"], default="off",
                   help="activation checkpointing of the encoder blocks in the training rows (both: a row each)")
    p.add_argument("--masks-per-clip", nargs="+", type=int, default=[1], metavar="K",
                   help="model.masks_per_clip of the one-pass and visible rows, a row per K (default 1); clips/s "
                   "counts loader clips, masked copies/s is K times that")
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
