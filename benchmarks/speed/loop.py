"""The loop row: the full Trainer pretraining loop on synthetic WebDataset shards, against the bare step rate."""
from __future__ import annotations

import gc
import os
import statistics
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from typing import Optional

import torch

from ssast.train.runtime import peak_memory_mb
from speed.common import MEL_BINS, Measurement, Spec, sync
from speed.rows import measure_step, model_config


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
