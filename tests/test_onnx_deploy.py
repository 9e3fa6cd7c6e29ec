"""ONNX for deployment without PyTorch: the waveform-in graph scores WAVs as `ssast predict --precision fp32` does (1e-4;
clips shorter than, equal to and longer than the window; padded batches; dynamic batch), the README's snippet runs in
a process where torch cannot be imported, and the embeddings graph gives `ssast embed` (and `--tokens`) for
classifiers and pretraining checkpoints."""
from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

from conftest import synth  # noqa: E402
from test_onnx import AUDIO, LABELS, TINY, write_classifier  # noqa: E402
from ssast.audio.windows import model_samples  # noqa: E402
from ssast.cli import main  # noqa: E402
from ssast.config import ModelConfig  # noqa: E402
from ssast.models.checkpoint import CheckpointMeta, save_checkpoint  # noqa: E402
from ssast.models.pretrain import SSASTPretrainModel  # noqa: E402
from ssast.serve.export import export_checkpoint  # noqa: E402
from ssast.serve.export.onnx import EMBEDDING, LENGTHS, TOKENS, WAVEFORM, onnx_metadata  # noqa: E402
from ssast.serve.inference import audio_config_of, embed_files, predict_files  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
WINDOW = model_samples(AUDIO)  # 10480 samples: the 64 frames of the test models


def session(path: Path):
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def scores(logits: np.ndarray, multilabel: bool) -> np.ndarray:
    if multilabel:
        return 1 / (1 + np.exp(-logits))
    e = np.exp(logits - logits.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


@pytest.fixture(scope="module")
def clips(tmp_path_factory) -> list[Path]:
    """16 kHz clips shorter than, exactly as long as, and longer than the model's window, with DC offsets."""
    root = tmp_path_factory.mktemp("clips")
    specs = [(4800, "tone", 330.0), (WINDOW, "speechlike", 0.0), (2 * WINDOW + 999, "noise", 0.0)]
    paths = []
    for i, (n, kind, freq) in enumerate(specs):
        wave = synth(n / 16000, kind=kind, freq=freq, seed=i)[:n] + 0.05 * (i + 1)
        assert len(wave) == n
        paths.append(root / f"clip{i}.wav")
        sf.write(str(paths[-1]), wave, 16000, subtype="FLOAT")
    return paths


def predicted(ckpt: Path, files: list[Path]) -> np.ndarray:
    """`ssast predict --precision fp32`'s scores of each file's first window, in label order."""
    rows = []
    for result in predict_files(str(ckpt), [str(f) for f in files], top_k=len(LABELS), precision="fp32"):
        top = {t["label"]: t["score"] for t in result["windows"][0]["top"]}
        rows.append([top[name] for name in LABELS])
    return np.array(rows)


def padded(files: list[Path]) -> tuple[np.ndarray, np.ndarray]:
    waves = [sf.read(str(f), dtype="float32")[0] for f in files]
    lengths = np.array([len(w) for w in waves], dtype=np.int64)
    batch = np.zeros((len(waves), lengths.max()), dtype=np.float32)
    for row, w in zip(batch, waves):
        row[: len(w)] = w
    return batch, lengths


@pytest.fixture(scope="module", params=["patch_mean", "frame_cls"])
def waveform_model(request, tmp_path_factory) -> tuple[Path, Path, bool]:
    root = tmp_path_factory.mktemp(f"wave_{request.param}")
    multilabel = request.param == "frame_cls"
    ckpt = write_classifier(root / "ckpt", request.param, multilabel=multilabel)
    out = export_checkpoint(str(ckpt), str(root / "model-wave.onnx"), "onnx", input="waveform")
    return ckpt, out, multilabel


def test_waveform_graph_equals_predict(waveform_model, clips):
    ckpt, out, multilabel = waveform_model
    sess = session(out)
    assert [i.name for i in sess.get_inputs()] == [WAVEFORM, LENGTHS]
    assert all(isinstance(d, str) for d in sess.get_inputs()[0].shape)  # batch and samples both dynamic
    expected = predicted(ckpt, clips)
    batch, lengths = padded(clips)  # one padded batch: each clip scored by its own samples only
    (logits,) = sess.run(None, {WAVEFORM: batch, LENGTHS: lengths})
    np.testing.assert_allclose(scores(logits, multilabel), expected, atol=1e-4)
    for i, f in enumerate(clips):  # batch of 1, each at its own sample count
        one, n = padded([f])
        (logits,) = sess.run(None, {WAVEFORM: one, LENGTHS: n})
        np.testing.assert_allclose(scores(logits, multilabel)[0], expected[i], atol=1e-4)
    # the padding is what the lengths say it is: telling the graph the short clip is whole changes its scores
    (wrong,) = sess.run(None, {WAVEFORM: batch[:1], LENGTHS: lengths[:1] * 0 + batch.shape[1]})
    assert np.abs(scores(wrong, multilabel)[0] - expected[0]).max() > 1e-3
    meta = onnx_metadata(out)
    assert meta["input"].startswith(f"{WAVEFORM}: (batch, samples)") and LENGTHS in meta["input"]


def readme_snippet(marker: str) -> str:
    text = (ROOT / "README.md").read_text()
    found = re.search(rf"<!-- {marker} -->\n```python\n(.*?)```", text, re.S)
    assert found, f"README has no python block after <!-- {marker} -->"
    return found.group(1)


# Runs a README snippet with torch unimportable, then fails if anything brought torch in after all.
NO_TORCH = """
import importlib.abc, sys
class NoTorch(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("torch", "torchaudio"):
            raise ImportError("torch is not available in this deployment")
sys.meta_path.insert(0, NoTorch())
sys.argv = ["snippet", *{files!r}]
exec(compile(open({snippet!r}).read(), "README snippet", "exec"))
assert not [m for m in sys.modules if m.split(".")[0] in ("torch", "torchaudio")], "torch was imported"
"""


def test_readme_snippet_runs_without_torch(waveform_model, clips, tmp_path):
    ckpt, out, _ = waveform_model
    (tmp_path / "model-wave.onnx").write_bytes(out.read_bytes())
    snippet = tmp_path / "snippet.py"
    snippet.write_text(readme_snippet("waveform-onnx"))
    code = NO_TORCH.format(files=[str(f) for f in clips], snippet=str(snippet))
    done = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    printed = [json.loads(line.split(" ", 1)[1]) for line in done.stdout.strip().splitlines()]
    got = np.array([[row[name] for name in LABELS] for row in printed])
    np.testing.assert_allclose(got, predicted(ckpt, clips), atol=1e-4)


def write_pretrained(path: Path) -> Path:
    torch.manual_seed(5)
    cfg = ModelConfig(**TINY, fshape=16, tshape=16, fstride=16, tstride=16, mask_patch=8)
    model = SSASTPretrainModel(cfg)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn(p.shape))  # away from the init, so a missed weight shows
    return save_checkpoint(path, model, CheckpointMeta(kind="pretrain", model=cfg, audio=AUDIO))


@pytest.mark.parametrize("kind", ["pretrain", "layers_projector", "frame_cls"])
@pytest.mark.parametrize("source", ["fbank", "waveform"])
def test_embeddings_graph_equals_embed(kind, source, clips, tmp_path):
    ckpt = write_pretrained(tmp_path / "ckpt") if kind == "pretrain" else write_classifier(tmp_path / "ckpt", kind)
    out = export_checkpoint(str(ckpt), str(tmp_path / "enc.onnx"), "onnx", input=source, output="embeddings",
                            tokens=True)
    sess = session(out)
    assert [o.name for o in sess.get_outputs()] == [EMBEDDING, TOKENS]
    short = clips[:2]  # within the window: ssast embed's .npy is the clip's one embedding
    clip_files = embed_files(str(ckpt), [str(f) for f in short], str(tmp_path / "clip"), precision="fp32")
    token_files = embed_files(str(ckpt), [str(f) for f in short], str(tmp_path / "tok"), tokens=True,
                              precision="fp32")
    if source == "waveform":
        feeds = [dict(zip((WAVEFORM, LENGTHS), padded([f]))) for f in short]
    else:
        from ssast.audio.features import FeatureExtractor
        from ssast.audio.io import load_audio
        from ssast.config import AugmentConfig
        from ssast.data.dataset import collate
        from ssast.models.checkpoint import read_checkpoint_meta

        audio = audio_config_of(read_checkpoint_meta(ckpt))
        features = FeatureExtractor(audio, AugmentConfig())
        feeds = []
        for f in short:
            batch = collate([{"wave": load_audio(str(f), max_samples=WINDOW), "labels": None, "key": "k"}])
            feeds.append({"fbank": features(batch["wave"], batch["num_frames"], train=False).numpy()})
    for feed, clip_npy, token_npy in zip(feeds, clip_files, token_files):
        clip, tokens = sess.run(None, feed)
        np.testing.assert_allclose(clip[0], np.load(clip_npy), atol=1e-4)
        np.testing.assert_allclose(tokens[0], np.load(token_npy), atol=1e-4)


def test_cli_embeddings_export_and_one_line_errors(tmp_path, capsys):
    pre = write_pretrained(tmp_path / "pre")
    assert main(["export", str(pre), str(tmp_path / "e.onnx"), "--format", "onnx", "--output", "embeddings"]) == 0
    assert [o.name for o in session(tmp_path / "e.onnx").get_outputs()] == [EMBEDDING]
    capsys.readouterr()
    for args, words in (
        (["--format", "onnx", "--tokens"], "--output embeddings"),
        (["--format", "hf", "--input", "waveform"], "transformers folder"),
        (["--format", "onnx"], "--output embeddings"),  # logits of a pretraining checkpoint: it names the way out
    ):
        code = main(["export", str(pre), str(tmp_path / "x.onnx"), *args])
        err = capsys.readouterr().err
        assert code == 2 and words in err and len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
    assert not (tmp_path / "x.onnx").exists()
