"""X-ARES: the encoder passes X-ARES's own check, X-ARES finds it from the module path its runner takes, the attention
mask keeps padded clips as they are alone, 10 minutes go through in windows, and X-ARES's runner scores a small local
task (encode, MLP and k-NN stages) with the command the README gives.

X-ARES's real tasks download their data at run time, which this machine cannot; they are not run here."""
from __future__ import annotations

import io
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

xares = pytest.importorskip("xares")

from xares.audio_encoder_checker import check_audio_encoder  # noqa: E402
from xares.utils import attr_from_py_path  # noqa: E402

from conftest import synth  # noqa: E402
from test_onnx import write_classifier  # noqa: E402
from test_onnx_deploy import write_pretrained  # noqa: E402
from ssast.evaluate.hear import load_model  # noqa: E402
from ssast.evaluate.xares import CHECKPOINT_ENV, SsastXaresEncoder  # noqa: E402
from ssast.models.weightfiles import CheckpointError  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module", params=["pretrain", "frame_cls"])
def checkpoint(request, tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp(f"xares_{request.param}")
    if request.param == "pretrain":
        return write_pretrained(root / "ckpt")
    return write_classifier(root / "ckpt", request.param)


def test_xares_checker_and_runner_path(checkpoint, monkeypatch):
    monkeypatch.setenv(CHECKPOINT_ENV, str(checkpoint))
    cls = attr_from_py_path("ssast/evaluate/xares.py", endswith="Encoder")  # what `python -m xares.run` does
    assert cls is SsastXaresEncoder
    encoder = cls()
    assert check_audio_encoder(encoder)
    out = encoder(torch.randn(2, 50000))
    # frames every hop_size_in_ms across the clip, as X-ARES's frame tasks count them
    assert out.shape[1] == pytest.approx(50000 / 16 / encoder.hop_size_in_ms, abs=1)
    hear = load_model(str(checkpoint))
    assert (encoder.sampling_rate, encoder.output_dim) == (16000, hear.timestamp_embedding_size)
    assert encoder.hop_size_in_ms == (10.0 if "frame" in checkpoint.parent.name else 40.0)


def test_attention_mask_embeds_each_clip_alone(checkpoint):
    encoder = SsastXaresEncoder(str(checkpoint))
    long, short = synth(3.0, kind="speechlike"), synth(1.1, kind="tone", freq=700) + 0.2  # a DC offset too
    batch = torch.zeros(2, len(long))
    batch[0], batch[1, : len(short)] = torch.from_numpy(long), torch.from_numpy(short)
    mask = (torch.arange(len(long))[None] < torch.tensor([[len(long)], [len(short)]])).long()
    out = encoder(batch, attention_mask=mask)
    alone = [encoder(torch.from_numpy(w)[None])[0] for w in (long, short)]
    torch.testing.assert_close(out[0], alone[0], atol=1e-5, rtol=0)
    torch.testing.assert_close(out[1, : len(alone[1])], alone[1], atol=1e-5, rtol=0)
    assert out[1, len(alone[1]) :].abs().sum() == 0 and len(alone[1]) < out.shape[1]
    unmasked = encoder(batch)  # without the mask the padding is read as audio: the short clip's frames change
    assert (unmasked[1, : len(alone[1])] - alone[1]).abs().max() > 1e-3


def test_ten_minutes_in_windows(checkpoint):
    encoder = SsastXaresEncoder(str(checkpoint), batch_size=64)
    wave = torch.from_numpy(np.tile(synth(1.0, kind="speechlike"), 600))  # 10 minutes
    out = encoder(wave[None])
    assert out.shape == (1, int(600_000 // encoder.hop_size_in_ms), encoder.output_dim)
    assert torch.isfinite(out).all() and out.abs().amax(dim=2).min() > 0  # every frame embedded, none left at 0
    # windows are placed from the start of the audio: the frames of the first 10 s are those of a 30 s excerpt
    head = encoder(wave[None, : 30 * 16000])
    first = int(10_000 // encoder.hop_size_in_ms)
    torch.testing.assert_close(out[:, :first], head[:, :first], atol=1e-5, rtol=0)


def test_no_checkpoint_is_one_clear_error(monkeypatch):
    monkeypatch.delenv(CHECKPOINT_ENV, raising=False)
    with pytest.raises(CheckpointError, match=CHECKPOINT_ENV):
        SsastXaresEncoder()


# A local X-ARES task module, as X-ARES's own tasks are written (one `*_config(encoder)` function), on data the test
# writes. X-ARES decodes task audio with torchaudio.load, which needs torchcodec (not installed here): the module
# decodes with soundfile instead, through webdataset's audio decoder hook.
FAKE_TASK = """
import io

import soundfile as sf
import torch
import webdataset as wds
from xares.task import TaskConfig


def soundfile_audio(key, data):
    if key.rsplit(".", 1)[-1] not in ("wav", "flac"):
        return None
    wave, sr = sf.read(io.BytesIO(data), dtype="float32", always_2d=True)
    return torch.from_numpy(wave.T.copy()), sr


wds.torch_audio = soundfile_audio


def tones_config(encoder) -> TaskConfig:
    return TaskConfig(name="tones", env_root={env!r}, encoder=encoder, output_dim=2, epochs=2, eval_weight=16,
                      label_processor=lambda x: {{"tone": 0, "noise": 1}}[x["label"]], batch_size_encode=4,
                      num_encoder_workers=0, batch_size_train=4, torch_num_threads=1)
"""


def write_tone_task(root: Path) -> Path:
    """Train, valid and test tars of 16 one-second clips (tones and noise), marked as downloaded."""
    import webdataset as wds

    env = root / "env" / "tones"
    env.mkdir(parents=True)
    for split in ("train", "valid", "test"):
        with wds.TarWriter(str(env / f"{split}-000000.tar")) as tar:
            for i in range(16):  # X-ARES's k-NN takes 10 neighbours
                label = ("tone", "noise")[i % 2]
                buf = io.BytesIO()
                sf.write(buf, synth(1.0, kind=label, freq=300 + 90 * i, seed=i), 16000, format="WAV", subtype="FLOAT")
                tar.write({"__key__": f"{split}{i}", "wav": buf.getvalue(),
                           "json": json.dumps({"label": label}).encode()})
    (env / ".audio_tar_ready").touch()  # the data is local: nothing to download
    (root / "tones_task.py").write_text(FAKE_TASK.format(env=str(root / "env")))
    return env


def test_xares_runner_on_a_local_task(checkpoint, tmp_path):
    """The README's command, `python -m xares.run ssast/evaluate/xares.py TASK.py`, through X-ARES's own stages
    (download skipped, encode into its embedding tars, MLP, k-NN) on a local two-class task of tones and noise."""
    import webdataset as wds

    env = write_tone_task(tmp_path)
    run_env = {**os.environ, CHECKPOINT_ENV: str(checkpoint), "PYTHONPATH": os.pathsep.join([str(ROOT), str(tmp_path)])}
    done = subprocess.run([sys.executable, "-m", "xares.run", "--max-jobs", "0", "ssast/evaluate/xares.py",
                           "tones_task.py"], cwd=tmp_path, env=run_env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    scores = dict(re.findall(r"Weighted Average (MLP|KNN) Score for All Datasets: ([0-9.]+)", done.stdout))
    # tones against noise: even a random tiny encoder separates them (k-NN 1.0 for both checkpoints here)
    assert float(scores["KNN"]) >= 0.9 and 0.0 <= float(scores["MLP"]) <= 1.0, done.stdout[-3000:]

    encoded = env / "embeddings" / "SsastXaresEncoder"
    test = list(wds.WebDataset(str(next(encoded.glob("wds-encoded-test*.tar"))), shardshuffle=False))
    assert len(test) == 16
    first = np.load(io.BytesIO(test[0]["npy"]))  # what X-ARES stored is the encoder's output for that clip
    encoder = SsastXaresEncoder(str(checkpoint))
    expected = encoder(torch.from_numpy(synth(1.0, kind="tone", freq=300, seed=0))[None])[0].numpy()
    np.testing.assert_allclose(first, expected, atol=1e-5)
