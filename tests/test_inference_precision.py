"""`ssast predict` / `embed --precision`: auto follows the training rule (bf16 on a CPU with native bf16 for models at
least 256 wide), bf16 scores agree with fp32 ones, fp32 stays the exact path."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from ssast.config import AudioConfig, ConfigError, ModelConfig
from ssast.serve.inference import embed_files, predict_files
from ssast.models.checkpoint import CheckpointMeta, save_checkpoint
from ssast.models.classifier import SSASTClassifier
from ssast.train.runtime import cpu_supports_bf16

LABELS = ["a", "b", "c", "d"]


def checkpoint(path: Path, dim: int) -> Path:
    torch.manual_seed(0)
    cfg = ModelConfig(size="custom", dim=dim, depth=2, heads=4, input_tdim=64)
    meta = CheckpointMeta(kind="classifier", model=cfg, labels=LABELS, audio=AudioConfig(target_length=64))
    save_checkpoint(path, SSASTClassifier(cfg, len(LABELS)), meta)
    return path


@pytest.fixture(scope="module")
def clips(tmp_path_factory) -> list[str]:
    root = tmp_path_factory.mktemp("clips")
    rng = np.random.default_rng(0)
    t = np.arange(12000) / 16000
    paths = []
    for i in range(3):
        wave = 0.3 * np.sin(2 * np.pi * (200 + 300 * i) * t) + 0.05 * rng.standard_normal(t.size)
        sf.write(root / f"c{i}.wav", wave.astype(np.float32), 16000)
        paths.append(str(root / f"c{i}.wav"))
    return paths


def scores(result: dict) -> dict[str, float]:
    return {t["label"]: t["score"] for t in result["top"]}


@pytest.mark.skipif(not cpu_supports_bf16(), reason="needs a CPU with native bf16 (AMX or AVX512-BF16)")
def test_wide_models_predict_in_bf16_by_default_and_agree_with_fp32(tmp_path, clips):
    ckpt = str(checkpoint(tmp_path / "wide", 256))
    fp32 = predict_files(ckpt, clips, top_k=4, precision="fp32")
    auto = predict_files(ckpt, clips, top_k=4)
    bf16 = predict_files(ckpt, clips, top_k=4, precision="bf16")
    assert auto == bf16  # auto is bf16 here
    for a, b in zip(fp32, bf16):
        sa, sb = scores(a), scores(b)
        assert a["top"][0]["label"] == b["top"][0]["label"]
        assert max(abs(sa[k] - sb[k]) for k in LABELS) < 0.02
    assert any(scores(a) != scores(b) for a, b in zip(fp32, bf16))  # bf16 really ran
    out32, out16 = tmp_path / "e32", tmp_path / "e16"
    e32 = np.load(embed_files(ckpt, clips[:1], str(out32), precision="fp32")[0])
    e16 = np.load(embed_files(ckpt, clips[:1], str(out16))[0])
    assert e16.dtype == np.float32 and np.abs(e16 - e32).max() < 0.05 * np.abs(e32).max()


def test_narrow_models_stay_fp32_on_auto_and_bad_precision_is_refused(tmp_path, clips):
    ckpt = str(checkpoint(tmp_path / "narrow", 64))
    assert predict_files(ckpt, clips, precision="auto") == predict_files(ckpt, clips, precision="fp32")
    with pytest.raises(ConfigError, match="--precision 'fp16'"):
        predict_files(ckpt, clips, precision="fp16")
