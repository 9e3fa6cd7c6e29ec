"""ONNX export: every classifier kind gives onnxruntime logits equal to PyTorch's (fp32, 1e-4) at batch 1 and 3, the
metadata alone is enough to make the input from a WAV, and `ssast export --format onnx` reports bad input in one line."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

from ssast.cli import main  # noqa: E402
from ssast.config import AudioConfig, ModelConfig  # noqa: E402
from ssast.serve.export import export_checkpoint  # noqa: E402
from ssast.serve.export.onnx import INPUT, OUTPUT, onnx_metadata  # noqa: E402
from ssast.serve.inference import predict_files  # noqa: E402
from ssast.models.checkpoint import CheckpointMeta, save_checkpoint  # noqa: E402
from ssast.models.classifier import SSASTClassifier  # noqa: E402
from ssast.models.pretrain import SSASTPretrainModel  # noqa: E402

TINY = dict(size="custom", dim=64, depth=2, heads=2, input_tdim=64)
KINDS = {
    "patch_mean": dict(fshape=16, tshape=16, fstride=16, tstride=16, pooling="mean"),
    "frame_cls": dict(fshape=128, tshape=2, fstride=128, tstride=1, pooling="cls", num_prefix=1),
    "odd_stride": dict(fshape=16, tshape=16, fstride=9, tstride=7, pooling="mean"),
    "layers_projector": dict(fshape=16, tshape=16, fstride=10, tstride=10, pooling="mean", layer_weights=True,
                             projector_dim=32),
}
LABELS = ["dog", "rain", "siren"]
AUDIO = AudioConfig(target_length=64, norm_mean=-6.6268077, norm_std=5.358466)


def write_classifier(path: Path, kind: str, multilabel: bool = False) -> Path:
    torch.manual_seed(len(kind))
    cfg = ModelConfig(**TINY, **KINDS[kind])
    model = SSASTClassifier(cfg, len(LABELS))
    if cfg.layer_weights:
        with torch.no_grad():
            model.layer_weights.copy_(torch.tensor([0.3, -0.2]))  # unequal, so a wrong weighting shows
    meta = CheckpointMeta(kind="classifier", model=cfg, labels=LABELS, label_ids=["/m/d", "/m/r", "/m/s"],
                          audio=AUDIO, multilabel=multilabel)
    save_checkpoint(path, model, meta)
    return path


@pytest.fixture(scope="module", params=list(KINDS))
def exported(request, tmp_path_factory) -> tuple[Path, Path, SSASTClassifier]:
    """(checkpoint, .onnx file, the torch model) for one model kind."""
    from ssast.models.factory import load_pretrained

    root = tmp_path_factory.mktemp(request.param)
    ckpt = write_classifier(root / "ckpt", request.param, multilabel=request.param == "frame_cls")
    out = export_checkpoint(str(ckpt), str(root / "model.onnx"), "onnx")
    model, _ = load_pretrained(ckpt)
    return ckpt, out, model


def test_onnxruntime_logits_equal_torch(exported):
    ckpt, out, model = exported
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    assert [i.name for i in session.get_inputs()] == [INPUT] and [o.name for o in session.get_outputs()] == [OUTPUT]
    assert session.get_inputs()[0].shape[1:] == [64, 128] and isinstance(session.get_inputs()[0].shape[0], str)
    gen = torch.Generator().manual_seed(0)
    for batch in (1, 3):
        x = 0.5 * torch.randn(batch, 64, 128, generator=gen)
        with torch.no_grad():
            expected = model(x).numpy()
        (logits,) = session.run(None, {INPUT: x.numpy()})
        assert logits.shape == (batch, len(LABELS))
        np.testing.assert_allclose(logits, expected, atol=1e-4, rtol=1e-4)
    assert not [p for p in out.parent.iterdir() if p.name.startswith(".")]  # no temporary file left beside it


def test_metadata_records_the_features(exported):
    ckpt, out, _ = exported
    meta = onnx_metadata(out)
    assert meta["sample_rate"] == "16000" and meta["num_mel_bins"] == "128" and meta["target_length"] == "64"
    assert float(meta["norm_mean"]) == AUDIO.norm_mean and float(meta["norm_std"]) == AUDIO.norm_std
    assert (meta["frame_length_ms"], meta["frame_shift_ms"]) == ("25", "10")
    assert json.loads(meta["labels"]) == LABELS and json.loads(meta["label_ids"]) == ["/m/d", "/m/r", "/m/s"]
    multilabel = ckpt.parent.name.startswith("frame_cls")
    assert meta["multilabel"] == ("true" if multilabel else "false")
    assert meta["scores"] == ("sigmoid" if multilabel else "softmax")
    assert "(fbank - norm_mean) / (2 * norm_std)" in meta["features"] and "num_mel_bins=128" in meta["features"]
    assert json.loads(meta["model"])["pooling"] == ("cls" if multilabel else "mean")


def test_metadata_is_enough_to_score_a_wav(exported, tmp_path):
    """Input made from the metadata alone with torchaudio's Kaldi fbank, run in onnxruntime == `predict`'s scores."""
    kaldi = pytest.importorskip("torchaudio.compliance.kaldi")
    ckpt, out, _ = exported
    meta = onnx_metadata(out)
    sr, bins, frames = int(meta["sample_rate"]), int(meta["num_mel_bins"]), int(meta["target_length"])
    t = np.arange(int(0.4 * sr)) / sr
    wav = tmp_path / "clip.wav"
    sf.write(str(wav), (0.3 * np.sin(2 * np.pi * 523 * t) + 0.1 * np.sin(2 * np.pi * 97 * t)).astype(np.float32), sr,
             subtype="FLOAT")
    wave, _ = sf.read(str(wav), dtype="float32")
    wave = torch.from_numpy(wave - wave.mean())[None]
    fbank = kaldi.fbank(wave, htk_compat=True, sample_frequency=sr, use_energy=False, window_type="hanning",
                        num_mel_bins=bins, dither=0.0, frame_shift=10)
    fbank = torch.nn.functional.pad(fbank, (0, 0, 0, frames - fbank.shape[0]))
    x = (fbank - float(meta["norm_mean"])) / (2 * float(meta["norm_std"]))
    (logits,) = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"]).run(None, {INPUT: x[None].numpy()})
    logits = torch.from_numpy(logits[0])
    probs = torch.sigmoid(logits) if meta["scores"] == "sigmoid" else torch.softmax(logits, -1)
    (pred,) = predict_files(str(ckpt), [str(wav)], top_k=len(LABELS), precision="fp32")
    names = json.loads(meta["labels"])
    assert {names[i]: p for i, p in enumerate(probs.tolist())} == pytest.approx(
        {t["label"]: t["score"] for t in pred["top"]}, abs=1e-4)


def run(capsys, *args) -> tuple[int, str, str]:
    code = main([str(a) for a in args])
    out = capsys.readouterr()
    return code, out.out, out.err


def test_cli_export_and_one_line_errors(tmp_path, capsys):
    ckpt = write_classifier(tmp_path / "ckpt", "patch_mean")
    out = tmp_path / "m.onnx"
    out.write_bytes(b"not an export")  # an unrelated file is never replaced (issue 25)
    code, _, err = run(capsys, "export", ckpt, out, "--format", "onnx")
    assert code == 2 and "not replaced" in err and out.read_bytes() == b"not an export"
    out.unlink()
    for _ in range(2):  # the second run replaces the first's export of the same checkpoint, whole
        code, stdout, err = run(capsys, "export", ckpt, out, "--format", "onnx")
        assert code == 0, err
    assert f"-> {out} (onnx)" in stdout
    assert onnx_metadata(out)["target_length"] == "64"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt", "m.onnx"]

    code, _, err = run(capsys, "export", tmp_path / "nothing", tmp_path / "x.onnx", "--format", "onnx")
    assert code == 2 and "checkpoint directory not found" in err and len(err.strip().splitlines()) == 1

    pre_cfg = ModelConfig(**TINY, mask_patch=8)
    save_checkpoint(tmp_path / "pre", SSASTPretrainModel(pre_cfg), CheckpointMeta(kind="pretrain", model=pre_cfg))
    code, _, err = run(capsys, "export", tmp_path / "pre", tmp_path / "p.onnx", "--format", "onnx")
    assert code == 2 and "pretraining checkpoint" in err and "fine-tune it first" in err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert not (tmp_path / "p.onnx").exists()

    code, _, err = run(capsys, "export", ckpt, tmp_path / "ckpt", "--format", "onnx")  # a folder, not a file
    assert code == 2 and "is a folder" in err and len(err.strip().splitlines()) == 1
