"""The ssast benchmark suite: throughput (clips/s), peak memory, FLOPs and fraction of the matmul peak of every step.

    python benchmarks/run.py [ROW ...] [--size tiny|small|base|custom] [--dim D --depth L --heads H] [--batch N]
        [--tdim 1024] [--tokens patch|frame|both] [--precision fp32 [bf16]] [--compile] [--device cpu|cuda]
        [--repeats 5] [--warmup 2] [--out results.json] [--quick] [--profile ROW]

Rows: pretrain-authors (two passes, two masks, fp32: the authors' behaviour), pretrain-onepass (one pass, one mask),
pretrain-visible (encoder on visible tokens + 2-block decoder), finetune-step and inference (classifier, 16x16 stride
10), inference-onnx (the same classifier exported to ONNX, run by ONNX Runtime on the CPU, fp32),
inference-onnx-waveform (the same, exported with the fbank in the graph, fed the clips' 16 kHz samples), fbank (batched Kaldi fbank of 10 s clips) and loop (the full Trainer pretraining loop on synthetic WebDataset
shards, against the bare step rate at the same settings). A step is forward + backward + fused Adam step on a fixed
random batch. Every row runs in a fresh subprocess so that its peak memory (CUDA max allocated, or the CPU's peak
resident set size) is its own. See benchmarks/README.md for the results table and the exact command lines.
"""
from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Optional

HERE = Path(__file__).resolve().parent
for path in (HERE.parent, HERE):  # run as a script from a checkout: the package, and the suite beside this file
    if str(path) not in sys.path:
        sys.path.insert(0, str(path))

import torch  # noqa: E402

from speed.common import ONNX_ROWS, RESULT_MARK, ROWS, BenchmarkError, Spec  # noqa: E402
from speed.peaks import add_utilization, combine_peaks, measure_peaks, peak_lines, run_peaks_in_subprocess  # noqa: E402
from speed.plan import build_parser, plan  # noqa: E402
from speed.profiling import profile  # noqa: E402
from speed.record import run_in_subprocess, run_spec  # noqa: E402
from speed.report import add_ratios, markdown_table  # noqa: E402
from speed.rows import export_row_model  # noqa: E402


def main(argv: Optional[list[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    if args.export_onnx:  # an ONNX row's export, in its own process
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
    precisions = sorted({"fp32" if s.row in ("pretrain-authors", "fbank", *ONNX_ROWS) else s.precision
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
