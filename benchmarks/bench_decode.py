"""Decode (+ fbank) throughput of 10 s clips per CPU core, and of the data loader with worker processes.

Writes synthetic 10 s clips (16 kHz wav and flac, 44.1 kHz stereo flac, 16 kHz mp3) to a temporary folder, then
times on one thread: ``load_audio`` with the 1024-frame crop, and ``load_audio`` + ``kaldi_fbank``. Finally it times
``build_loader`` over a JSON list of the flac clips with ``--workers`` processes (decode only, as in training where
the fbank runs on the GPU). Prints a table; ``--out FILE`` also writes the numbers as JSON.

    python benchmarks/bench_decode.py --clips 24 --out bench_decode.json
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import soundfile as sf
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from ssast.audio.io import load_audio  # noqa: E402
from ssast.config import Config  # noqa: E402
from ssast.audio.fbank import max_samples  # noqa: E402
from ssast.data.loader import build_loader  # noqa: E402


def speechlike(seconds: float, sr: int, seed: int) -> np.ndarray:
    """Harmonics with vibrato and an envelope: decodes and compresses like real audio, unlike silence."""
    t = np.arange(int(seconds * sr)) / sr
    rng = np.random.default_rng(seed)
    f0 = 110 + 40 * rng.random() + 15 * np.sin(2 * np.pi * 5 * t)
    phase = 2 * np.pi * np.cumsum(f0) / sr
    x = sum(np.sin(k * phase) / k for k in range(1, 15)) * (0.5 + 0.5 * np.sin(2 * np.pi * 2 * t) ** 2)
    x = x / np.abs(x).max() * 0.5 + 0.01 * rng.standard_normal(len(t))
    return x.astype(np.float32)


def write_clips(folder: Path, n: int, fmt: str) -> list[Path]:
    """n 10 s clips of one format: wav16k, flac16k, flac44k_stereo or mp3."""
    paths = []
    for i in range(n):
        if fmt == "flac44k_stereo":
            x = np.stack([speechlike(10, 44100, i), speechlike(10, 44100, i + 1000)], axis=1)
            sr, ext = 44100, "flac"
        else:
            x, sr, ext = speechlike(10, 16000, i), 16000, fmt[:-3] if fmt.endswith("16k") else fmt
        p = folder / fmt / f"clip{i:04d}.{ext}"
        p.parent.mkdir(parents=True, exist_ok=True)
        sf.write(p, x, sr)
        paths.append(p)
    return paths


def time_per_clip(fn, paths: list[Path], repeats: int) -> float:
    """Clips per second of fn over paths (best of ``repeats`` passes, after one warm-up clip)."""
    fn(paths[0])
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        for p in paths:
            fn(p)
        best = min(best, time.perf_counter() - t0)
    return len(paths) / best


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--clips", type=int, default=16, help="clips per format")
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--workers", type=int, default=max(1, min(4, (os.cpu_count() or 2) - 1)),
                    help="DataLoader worker processes for the loader measurement (0: skip it)")
    ap.add_argument("--batch", type=int, default=24)
    ap.add_argument("--target-length", type=int, default=1024)
    ap.add_argument("--out", type=str, default="", help="write the results as JSON here")
    args = ap.parse_args(argv)

    from ssast.audio.fbank import kaldi_fbank

    torch.set_num_threads(1)  # per-core numbers
    window = max_samples(args.target_length)
    results: dict = {
        "device": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "torch": torch.__version__,
        "clip_seconds": 10,
        "target_length": args.target_length,
        "per_core": {},
    }
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        formats = ["wav16k", "flac16k", "flac44k_stereo", "mp3"]
        clips = {fmt: write_clips(folder, args.clips, fmt) for fmt in formats}
        print(f"{'format':<16}{'decode clips/s/core':>22}{'decode+fbank clips/s/core':>28}")
        for fmt in formats:
            def decode(p):
                return load_audio(p, max_samples=window)

            def decode_fbank(p):
                return kaldi_fbank(torch.from_numpy(load_audio(p, max_samples=window)))

            d = time_per_clip(decode, clips[fmt], args.repeats)
            df = time_per_clip(decode_fbank, clips[fmt], args.repeats)
            results["per_core"][fmt] = {"decode": round(d, 1), "decode_fbank": round(df, 1)}
            print(f"{fmt:<16}{d:>22.1f}{df:>28.1f}")

        if args.workers > 0:
            torch.set_num_threads(max(1, os.cpu_count() or 1))
            lst = folder / "flac.json"
            lst.write_text(json.dumps({"data": [{"wav": str(p)} for p in clips["flac16k"] * 4]}))
            cfg = Config()
            cfg.audio.target_length = args.target_length
            cfg.data.train = [str(lst)]
            cfg.data.batch_size = args.batch
            cfg.data.num_workers = args.workers
            loader = build_loader(cfg, "train")
            loader.set_epoch(0)
            t0 = time.perf_counter()
            n = sum(b["wave"].shape[0] for b in loader)
            rate = n / (time.perf_counter() - t0)
            results["loader"] = {"workers": args.workers, "batch": args.batch, "clips_per_s": round(rate, 1),
                                 "batches_per_s": round(rate / args.batch, 2), "format": "flac16k",
                                 "note": "includes worker start-up"}
            print(f"loader, {args.workers} workers, flac 16 kHz, decode only: {rate:.1f} clips/s "
                  f"= {rate / args.batch:.2f} batches of {args.batch}/s (worker start-up included)")
    if args.out:
        Path(args.out).write_text(json.dumps(results, indent=2))
    return results


if __name__ == "__main__":
    main()
