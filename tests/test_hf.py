"""Hugging Face transformers: export to a stock AST folder and import from one, with parity against transformers itself.

Everything is built locally (tiny models, synthetic WAVs); nothing is downloaded.
"""
from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import soundfile as sf
import torch

transformers = pytest.importorskip("transformers")

from ssast.cli import main  # noqa: E402
from ssast.config import AudioConfig, ModelConfig  # noqa: E402
from ssast.demo.synthetic import EVENT_CLASSES as CLASSES, make_corpus  # noqa: E402
from ssast.serve.export import export_hf, import_hf  # noqa: E402
from ssast.serve.inference import embed_files, predict_files  # noqa: E402
from ssast.models.checkpoint import CheckpointMeta, load_state, read_checkpoint_meta, save_checkpoint  # noqa: E402
from ssast.models.classifier import SSASTClassifier  # noqa: E402
from ssast.models.factory import build_classifier  # noqa: E402
from ssast.models.pretrain import SSASTPretrainModel  # noqa: E402
from conftest import make_wav  # noqa: E402

LABELS = ["dog bark", "siren", "speech", "music", "rain", "engine", "bird"]
# strides differ between the axes, and the input is not square, so a swapped axis anywhere cannot go unnoticed
TINY = dict(size="custom", dim=64, depth=2, heads=4, fshape=16, tshape=16, fstride=10, tstride=12,
            input_fdim=128, input_tdim=128, pooling="cls")
AUDIO = AudioConfig(num_mel_bins=128, target_length=128, norm_mean=-5.5, norm_std=4.25)


def spread(model: torch.nn.Module, seed: int) -> None:
    """Perturb every weight so that logits are far apart and every tensor (prefix, positions) matters."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=g) * 0.3)


def save_ours(path, *, multilabel: bool = False, seed: int = 0, **changes):
    """A tiny classifier checkpoint of ours with label names and its own feature settings."""
    cfg = ModelConfig(**{**TINY, **changes}, num_classes=len(LABELS))
    model = SSASTClassifier(cfg, len(LABELS)).eval()
    spread(model, seed)
    meta = CheckpointMeta("classifier", cfg, labels=LABELS, audio=AUDIO, multilabel=multilabel)
    return save_checkpoint(path, model, meta)


def hf_config(**changes):
    base = dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=192, patch_size=16,
                frequency_stride=10, time_stride=12, max_length=100, num_mel_bins=32,
                id2label={i: name for i, name in enumerate(LABELS[:6])})
    return transformers.ASTConfig(**{**base, **changes})


def run(capsys, *args) -> tuple[int, str, str]:
    capsys.readouterr()  # drop what came before (transformers' progress bars)
    code = main([str(a) for a in args])
    out = capsys.readouterr()
    return code, out.out, out.err


def one_line_error(capsys, *args) -> str:
    code, _, err = run(capsys, *args)
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


@pytest.fixture(scope="module")
def wavs(tmp_path_factory):
    """Clips shorter than the 1.28 s window, about as long, and longer (cut to the window)."""
    root = tmp_path_factory.mktemp("wavs")
    specs = [(0.5, "tone", 300.0), (1.3, "speechlike", 120.0), (3.1, "noise", 0.0), (2.0, "tone", 2500.0)]
    paths = []
    for i, (seconds, kind, freq) in enumerate(specs):
        p = root / f"clip{i}_{seconds}s.wav"
        make_wav(p, seconds, kind=kind, freq=freq, seed=i)
        paths.append(p)
    return paths


# --- (a) export: transformers' pipeline gives ssast predict's top-5 ------------------------------------------------


@pytest.mark.parametrize("multilabel", [False, True])
def test_pipeline_matches_predict(tmp_path, wavs, multilabel):
    ckpt = save_ours(tmp_path / "ours", multilabel=multilabel)
    out = export_hf(ckpt, tmp_path / "hf")
    assert sorted(p.name for p in out.iterdir()) == ["config.json", "model.safetensors", "preprocessor_config.json"]

    model = transformers.AutoModelForAudioClassification.from_pretrained(out)
    assert type(model).__name__ == "ASTForAudioClassification"
    features = transformers.AutoFeatureExtractor.from_pretrained(out)
    assert type(features).__name__ == "ASTFeatureExtractor"
    assert (features.mean, features.std, features.max_length, features.num_mel_bins) == (-5.5, 4.25, 128, 128)

    ours = predict_files(str(ckpt), [str(w) for w in wavs], top_k=5, precision="fp32")
    pipe = transformers.pipeline("audio-classification", model=str(out))  # the default dtype "auto" is the file's fp32
    assert pipe.model.dtype == torch.float32
    for w, mine in zip(wavs, ours):
        wave, sr = sf.read(str(w), dtype="float32")
        theirs = pipe({"raw": wave, "sampling_rate": sr}, top_k=5)
        # transformers scores the first max_length frames; predict's first window is the same excerpt (a longer
        # file's clip-level top averages all its windows)
        first = mine["windows"][0]["top"]
        assert [t["label"] for t in theirs] == [t["label"] for t in first], w.name
        np.testing.assert_allclose([t["score"] for t in theirs], [t["score"] for t in first], atol=1e-4)
    # the scores are not all alike: the comparison above could fail
    assert max(t["score"] for t in ours[0]["top"]) - min(t["score"] for t in ours[0]["top"]) > 0.05


def test_exported_features_equal_ours(tmp_path, wavs):
    """transformers' feature extractor computes our normalised filter bank, padding and cutting included.

    We remove each clip's DC offset before the filter bank; transformers does not. Kaldi removes every frame's own
    offset anyway, so the two differ only by float rounding, which shows in bins at the noise floor of the 16-bit
    WAVs (up to about 3e-4 after normalising) and nowhere near the 1e-4 the predictions are compared at.
    """
    from ssast.audio.fbank import max_samples
    from ssast.audio.features import FeatureExtractor
    from ssast.audio.io import load_audio
    from ssast.config import AugmentConfig
    from ssast.data.dataset import collate
    from ssast.serve.inference import audio_config_of

    ckpt = save_ours(tmp_path / "ours")
    features = transformers.AutoFeatureExtractor.from_pretrained(export_hf(ckpt, tmp_path / "hf"))
    audio = audio_config_of(read_checkpoint_meta(ckpt))
    decoded = [load_audio(w, max_samples=max_samples(audio.target_length)) for w in wavs]  # what ours reads
    batch = collate([{"wave": d, "labels": None, "key": str(w)} for d, w in zip(decoded, wavs)])
    ours = FeatureExtractor(audio, AugmentConfig())(batch["wave"], batch["num_frames"], train=False)
    theirs = features(decoded, sampling_rate=16000, return_tensors="pt")["input_values"]
    assert theirs.shape == ours.shape == (len(wavs), 128, 128)
    torch.testing.assert_close(theirs, ours, atol=1e-5, rtol=0)
    raw = [sf.read(str(w), dtype="float32")[0] for w in wavs]  # the whole file, DC offset included
    theirs = features(raw, sampling_rate=16000, return_tensors="pt")["input_values"]
    torch.testing.assert_close(theirs, ours, atol=5e-4, rtol=0)


# --- (b) import: a transformers AST computes the same logits here -------------------------------------------------


def save_hf_model(folder, layout: str = "safetensors", head: bool = True, seed: int = 0, **changes):
    """A randomly initialised tiny AST saved as transformers does; ``layout`` picks the weights file."""
    torch.manual_seed(seed)
    cls = transformers.ASTForAudioClassification if head else transformers.ASTModel
    model = cls(hf_config(**changes)).eval()
    spread(model, seed)
    model.save_pretrained(folder)
    if layout != "safetensors":  # an older folder: pytorch_model.bin, with the file's names or the modules' own
        state = load_state_like_transformers(folder) if layout == "bin" else model.state_dict()
        (folder / "model.safetensors").unlink()
        torch.save(state, folder / "pytorch_model.bin")
    return model


def load_state_like_transformers(folder):
    import safetensors.torch

    return safetensors.torch.load_file(str(folder / "model.safetensors"))


@pytest.mark.parametrize("layout", ["safetensors", "bin", "bin-module-names"])
def test_imported_ast_gives_transformers_logits(tmp_path, capsys, layout):
    hf = tmp_path / "hf"
    model = save_hf_model(hf, layout)
    code, out, err = run(capsys, "import-checkpoint", hf, tmp_path / "ours")
    assert code == 0, err
    assert "classifier, 6 classes" in out and "no preprocessor_config.json" in err and "AudioSet" in err
    meta = read_checkpoint_meta(tmp_path / "ours")
    assert meta.labels == LABELS[:6] and meta.model.pooling == "cls" and meta.model.num_prefix == 2
    assert meta.model.norm_eps == 1e-12 and meta.model.mlp_ratio == 3.0  # transformers' default eps, 192 = 3 x 64
    assert (meta.audio.norm_mean, meta.audio.norm_std, meta.audio.target_length) == (-4.2677393, 4.5689974, 100)

    from ssast.models.factory import load_pretrained

    ours, _ = load_pretrained(tmp_path / "ours")
    x = torch.randn(3, 100, 32, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        want = model(input_values=x).logits
        got = ours(x)
    assert want.abs().max() > 1  # logits far from zero: a tolerance of 1e-4 means something
    torch.testing.assert_close(got, want, atol=1e-4, rtol=0)


def test_imported_ast_predicts_as_the_pipeline(tmp_path, wavs):
    """With its feature extractor saved beside it, the imported model's predictions are the pipeline's."""
    hf = tmp_path / "hf"
    save_hf_model(hf, max_length=128, num_mel_bins=128)
    extractor = transformers.ASTFeatureExtractor(max_length=128, num_mel_bins=128, mean=-6.0, std=5.0)
    extractor.save_pretrained(hf)
    meta = import_hf(hf, tmp_path / "ours")
    assert (meta.audio.norm_mean, meta.audio.norm_std, meta.audio.target_length) == (-6.0, 5.0, 128)
    ours = predict_files(str(tmp_path / "ours"), [str(w) for w in wavs], top_k=5, precision="fp32")
    pipe = transformers.pipeline("audio-classification", model=str(hf))
    for w, mine in zip(wavs, ours):
        wave, sr = sf.read(str(w), dtype="float32")
        theirs = pipe({"raw": wave, "sampling_rate": sr}, top_k=5)
        first = mine["windows"][0]["top"]  # the excerpt transformers scores (see test_pipeline_matches_predict)
        assert [t["label"] for t in theirs] == [t["label"] for t in first]
        np.testing.assert_allclose([t["score"] for t in theirs], [t["score"] for t in first], atol=1e-4)
    emb = embed_files(str(tmp_path / "ours"), [str(wavs[0])], str(tmp_path / "emb"), precision="fp32")
    assert np.load(emb[0]).shape == (64,)


def test_do_normalize_false_reads_the_raw_filter_bank(tmp_path, capsys):
    hf = tmp_path / "hf"
    save_hf_model(hf)
    transformers.ASTFeatureExtractor(max_length=100, num_mel_bins=32, do_normalize=False).save_pretrained(hf)
    meta = import_hf(hf, tmp_path / "ours")
    assert (meta.audio.norm_mean, meta.audio.norm_std) == (0.0, 0.5)  # (x - 0) / (2 * 0.5) = x
    assert "do_normalize is false" in capsys.readouterr().err


# --- (c) round trip ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("multilabel", [False, True])
def test_round_trip_is_exact(tmp_path, multilabel):
    ckpt = save_ours(tmp_path / "ours", multilabel=multilabel)
    back = tmp_path / "back"
    meta = import_hf(export_hf(ckpt, tmp_path / "hf"), back)
    original = read_checkpoint_meta(ckpt)
    assert meta.imported_from == "hf"
    assert dataclasses.replace(meta, imported_from=None) == original
    a, b = load_state(ckpt), load_state(back)
    assert sorted(a) == sorted(b)
    for k in a:
        assert torch.equal(a[k], b[k]), k


# --- (d) what transformers' AST cannot express is refused in one line -----------------------------------------------


@pytest.mark.parametrize("changes, words", [
    (dict(pooling="mean"), "model.pooling=mean"),
    (dict(fshape=128, tshape=2, fstride=128, tstride=1), "128x2 frames are not square"),
    (dict(num_prefix=1), "1 prefix token"),
    (dict(layer_weights=True), "model.layer_weights"),
    (dict(projector_dim=16), "model.projector_dim"),
])
def test_export_refuses_what_ast_cannot_run(tmp_path, capsys, changes, words):
    ckpt = save_ours(tmp_path / "ours", **changes)
    line = one_line_error(capsys, "export", ckpt, tmp_path / "hf", "--format", "hf")
    assert words in line and "--format onnx" in line and str(ckpt) in line
    assert not (tmp_path / "hf").exists()


def test_pretraining_checkpoint_exports_as_ast_model(tmp_path, wavs):
    """A pretraining checkpoint becomes transformers' ASTModel, whose hidden states after the two prefix tokens are
    `ssast embed --tokens` (first window of each clip, 1e-4), on our features of clips shorter and longer than it."""
    from ssast.audio.fbank import max_samples
    from ssast.audio.features import FeatureExtractor
    from ssast.audio.io import load_audio
    from ssast.config import AugmentConfig
    from ssast.data.dataset import collate

    cfg = ModelConfig(**{**TINY, "fstride": 16, "tstride": 16, "pooling": "mean"}, mask_patch=4)
    model = SSASTPretrainModel(cfg)
    spread(model, seed=3)
    ckpt = save_checkpoint(tmp_path / "pt", model, CheckpointMeta("pretrain", cfg, audio=AUDIO))
    out = export_hf(ckpt, tmp_path / "hf")
    base = transformers.AutoModel.from_pretrained(out).eval()
    assert type(base).__name__ == "ASTModel" and json.loads((out / "config.json").read_text())["architectures"] == [
        "ASTModel"]
    decoded = [load_audio(w, max_samples=max_samples(AUDIO.target_length)) for w in wavs]
    batch = collate([{"wave": d, "labels": None, "key": str(w)} for d, w in zip(decoded, wavs)])
    x = FeatureExtractor(AUDIO, AugmentConfig())(batch["wave"], batch["num_frames"], train=False)
    with torch.no_grad():
        hidden = base(input_values=x).last_hidden_state[:, 2:].numpy()
    written = embed_files(str(ckpt), [str(w) for w in wavs], str(tmp_path / "emb"), tokens=True, timestamps=True,
                          precision="fp32")
    for theirs, npz in zip(hidden, written):
        np.testing.assert_allclose(theirs, np.load(npz)["embeddings"][0], atol=1e-4)


def test_export_refuses_a_pretraining_checkpoint_ast_cannot_run(tmp_path, capsys):
    cfg = ModelConfig(**{**TINY, "fshape": 128, "tshape": 2, "fstride": 128, "tstride": 2}, mask_patch=4)
    ckpt = save_checkpoint(tmp_path / "pt", SSASTPretrainModel(cfg), CheckpointMeta("pretrain", cfg))
    line = one_line_error(capsys, "export", ckpt, tmp_path / "hf", "--format", "hf")
    assert "128x2 frames are not square" in line and "--format onnx --output embeddings" in line
    assert not (tmp_path / "hf").exists()


@pytest.mark.parametrize("changes, words", [
    (dict(hidden_act="relu"), "hidden_act 'relu'"),
    (dict(qkv_bias=False), "qkv_bias false"),
])
def test_import_refuses_what_ssast_cannot_run(tmp_path, capsys, changes, words):
    hf = tmp_path / "hf"
    save_hf_model(hf, **changes)
    line = one_line_error(capsys, "import-checkpoint", hf, tmp_path / "ours")
    assert words in line and str(hf / "config.json") in line
    assert not (tmp_path / "ours").exists()


def test_import_refusals_of_the_command(tmp_path, capsys):
    headless = tmp_path / "base"
    save_hf_model(headless, head=False)
    line = one_line_error(capsys, "import-checkpoint", headless, tmp_path / "a")
    assert "without a classification head" in line and f"model.init={headless}" in line
    hf = tmp_path / "hf"
    save_hf_model(hf)
    line = one_line_error(capsys, "import-checkpoint", hf, tmp_path / "b", "--input-tdim", "64")
    assert "--input-tdim" in line and "transformers AST folder" in line
    transformers.ASTFeatureExtractor(max_length=100, num_mel_bins=32).save_pretrained(hf)
    line = one_line_error(capsys, "import-checkpoint", hf, tmp_path / "c", "--stats", "esc50")
    assert "preprocessor_config.json" in line and "drop --stats" in line
    not_ast = tmp_path / "folder"
    not_ast.mkdir()
    line = one_line_error(capsys, "import-checkpoint", not_ast, tmp_path / "d")
    assert "not a transformers AST folder" in line
    assert not any((tmp_path / n).exists() for n in "abcd")


def test_outputs_that_are_other_folders_are_not_replaced(tmp_path, capsys):
    ckpt = save_ours(tmp_path / "ours")
    mine = tmp_path / "photos"
    mine.mkdir()
    (mine / "a.jpg").write_bytes(b"x")
    line = one_line_error(capsys, "export", ckpt, mine, "--format", "hf")
    assert "is not a transformers AST folder" in line and (mine / "a.jpg").exists()
    line = one_line_error(capsys, "import-checkpoint", export_hf(ckpt, tmp_path / "hf"), mine)
    assert "is not an ssast checkpoint" in line and sorted(p.name for p in mine.iterdir()) == ["a.jpg"]
    # an earlier export (or an empty folder) is replaced; a transformers folder given as a checkpoint gets a hint
    assert export_hf(ckpt, tmp_path / "hf") == tmp_path / "hf"
    line = one_line_error(capsys, "predict", tmp_path / "hf", "x.wav")
    assert "transformers AST folder" in line and "ssast import-checkpoint" in line
    # an export of another checkpoint, or an import over a checkpoint from elsewhere, needs --overwrite (issue 25)
    other = save_ours(tmp_path / "other", seed=1)
    line = one_line_error(capsys, "export", other, tmp_path / "hf", "--format", "hf")
    assert "another source" in line and "--overwrite" in line
    assert run(capsys, "export", other, tmp_path / "hf", "--format", "hf", "--overwrite")[0] == 0
    before = (other / "model.safetensors").read_bytes()
    line = one_line_error(capsys, "import-checkpoint", tmp_path / "hf", other)
    assert "--overwrite" in line and (other / "model.safetensors").read_bytes() == before
    assert run(capsys, "import-checkpoint", tmp_path / "hf", tmp_path / "imp")[0] == 0
    assert run(capsys, "import-checkpoint", tmp_path / "hf", tmp_path / "imp")[0] == 0  # a rerun of the same import


def test_export_is_atomic(tmp_path, monkeypatch):
    """A failure while writing leaves no folder, not even a half-written one beside it."""
    ckpt = save_ours(tmp_path / "ours")

    def broken(self, folder, *args, **kwargs):
        (tmp_path / "seen").write_text(str(folder))
        raise OSError("disk full")

    monkeypatch.setattr(transformers.ASTFeatureExtractor, "save_pretrained", broken)
    with pytest.raises(OSError, match="disk full"):
        export_hf(ckpt, tmp_path / "hf")
    assert (tmp_path / "seen").exists()  # it failed part-way, with the weights and config already written
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ours", "seen"]


# --- (e) fine-tuning starts from a transformers AST -----------------------------------------------------------------


@pytest.mark.parametrize("head", [True, False])
def test_model_init_loads_the_encoder(tmp_path, head):
    hf = tmp_path / "hf"
    model = save_hf_model(hf, head=head)
    base = model.audio_spectrogram_transformer if head else model
    cfg = ModelConfig(**{**TINY, "input_fdim": 32, "input_tdim": 64, "tstride": 16, "pooling": "mean"}, mlp_ratio=3.0)
    ours, info = build_classifier(cfg, 3, init=str(hf))
    assert "transformers AST" in info and "positions 2x8 -> 2x4" in info and "1e-12 -> 1e-06" in info
    layer = base.layers[1]
    qkv = torch.cat([layer.attention.q_proj.weight, layer.attention.k_proj.weight, layer.attention.v_proj.weight])
    assert torch.equal(ours.encoder.blocks[1].attn.qkv.weight, qkv)
    assert torch.equal(ours.encoder.blocks[0].mlp.fc2.weight, base.layers[0].mlp.fc2.weight)
    assert torch.equal(ours.encoder.prefix_tokens[0, 1], base.embeddings.distillation_token[0, 0])


def test_finetune_and_evaluate_from_a_transformers_folder(tmp_path, capsys):
    corpus = make_corpus(tmp_path / "data", pool=0, train_per_class=1, test_per_class=1, seconds=0.7)
    hf = tmp_path / "hf"
    save_hf_model(hf, max_length=64, num_mel_bins=128, id2label=dict(enumerate(n for _, n in CLASSES)))
    tiny = ["model.size=custom", "model.dim=64", "model.depth=2", "model.heads=4", "model.mlp_ratio=3",
            "model.fstride=10", "model.tstride=12", "audio.target_length=64", "data.num_workers=0",
            "data.batch_size=3", "train.progress=none", "train.precision=fp32"]
    code, _, err = run(capsys, "finetune", *tiny, f"data.train=[{corpus.train}]", f"data.label_csv={corpus.labels}",
                       "train.epochs=1", f"train.run_dir={tmp_path / 'ft'}", f"model.init={hf}")
    assert code == 0, err
    log = json.loads((tmp_path / "ft" / "final" / "model.json").read_text())
    assert log["model"]["init"] == str(hf)

    code, _, err = run(capsys, "import-checkpoint", hf, tmp_path / "imported")
    assert code == 0, err
    code, out, err = run(capsys, "evaluate", tmp_path / "imported", f"data.test=[{corpus.test}]",
                         f"data.label_csv={corpus.labels}", "data.num_workers=0")
    assert code == 0, err
    assert json.loads(out)["num_clips"] == len(CLASSES)
