"""Throughput of the Kaldi fbank on 10 s clips: torchaudio per clip vs ours per clip and batched, CPU and CUDA.

Usage: python benchmarks/bench_fbank.py [--clips 32] [--batch 16] [--threads 1] [--out results.json]
CPU numbers are per ``--threads`` cores (default 1: what one DataLoader worker gets); CUDA runs when a GPU is present.
"""
from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path
from typing import Callable

import torch
import torchaudio
import torchaudio.compliance.kaldi as K

from ssast.audio.fbank import kaldi_fbank

SR = 16000


def torchaudio_fbank(wave: torch.Tensor) -> torch.Tensor:
    """The reference: torchaudio's fbank with the SSAST arguments, one clip at a time."""
    return torch.stack(
        [
            K.fbank(w[None], htk_compat=True, sample_frequency=SR, use_energy=False, window_type="hanning",
                    num_mel_bins=128, dither=0.0, frame_shift=10)
            for w in wave
        ]
    )


def time_it(fn: Callable[[], object], repeats: int, sync: Callable[[], None]) -> float:
    """Best-of-``repeats`` seconds of one call after a warm-up call (the minimum is the least noisy estimate)."""
    fn()
    sync()
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        sync()
        best = min(best, time.perf_counter() - start)
    return best


def bench(clips: int, batch: int, seconds: float, repeats: int) -> list[dict]:
    """Rows of {method, device, batch, clips_per_s, ms_per_clip}."""
    gen = torch.Generator().manual_seed(0)
    waves = 0.1 * torch.randn(clips, int(seconds * SR), generator=gen)
    batches = list(waves.split(batch))
    rows = []

    def add(method: str, device: str, bsz: int, fn: Callable[[], object], sync: Callable[[], None]) -> None:
        secs = time_it(fn, repeats, sync)
        rows.append({"method": method, "device": device, "batch": bsz,
                     "clips_per_s": clips / secs, "ms_per_clip": 1000 * secs / clips})

    cpu_sync = lambda: None  # noqa: E731
    add("torchaudio, per clip", "cpu", 1, lambda: [torchaudio_fbank(b) for b in batches], cpu_sync)
    add("ssast, per clip", "cpu", 1, lambda: [kaldi_fbank(w) for w in waves], cpu_sync)
    add("ssast, batched", "cpu", batch, lambda: [kaldi_fbank(b) for b in batches], cpu_sync)
    if torch.cuda.is_available():
        cuda_sync = torch.cuda.synchronize
        on_gpu = [b.cuda() for b in batches]
        add("ssast, batched", "cuda", batch, lambda: [kaldi_fbank(b) for b in on_gpu], cuda_sync)
        whole = waves.cuda()
        add("ssast, one batch", "cuda", clips, lambda: kaldi_fbank(whole), cuda_sync)
        add("torchaudio, per clip", "cuda", 1, lambda: [torchaudio_fbank(b) for b in on_gpu], cuda_sync)
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--clips", type=int, default=32, help="clips per measurement")
    ap.add_argument("--batch", type=int, default=16, help="clips per fbank call in the batched rows")
    ap.add_argument("--seconds", type=float, default=10.0, help="clip duration")
    ap.add_argument("--threads", type=int, default=1, help="CPU threads (1 = one loader worker's core)")
    ap.add_argument("--repeats", type=int, default=3, help="timed repeats; the best is reported")
    ap.add_argument("--out", type=Path, default=None, help="write the results as JSON here")
    args = ap.parse_args()
    if args.clips < 1 or args.batch < 1 or args.threads < 1 or args.seconds < 0.025:
        ap.error("--clips, --batch and --threads must be positive and --seconds at least one 25 ms window")
    torch.set_num_threads(args.threads)
    rows = bench(args.clips, args.batch, args.seconds, args.repeats)
    print(f"Kaldi fbank, {args.seconds:g} s clips, {args.clips} clips, CPU threads {args.threads}")
    print(f"{'method':<22} {'device':<6} {'batch':>5} {'clips/s':>10} {'ms/clip':>9}")
    for r in rows:
        print(f"{r['method']:<22} {r['device']:<6} {r['batch']:>5} {r['clips_per_s']:>10.1f} {r['ms_per_clip']:>9.3f}")
    if args.out is not None:
        meta = {
            "clips": args.clips, "batch": args.batch, "seconds": args.seconds, "threads": args.threads,
            "torch": torch.__version__, "torchaudio": torchaudio.__version__, "cpu": platform.processor() or
            platform.machine(), "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
        }
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps({"meta": meta, "results": rows}, indent=2))
        print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
