"""SUPERB's layer combination (model.layer_weights) and utterance head (model.projector_dim): the weighted sum, its
gradients, unchanged models when off, a fine-tune through the CLI, and the VoxCeleb1 recipes that use them."""
from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import torch

from ssast.cli import main
from ssast.config import DATASET_STATS, ModelConfig, OptimConfig, load_config
from ssast.demo.run import make_corpus
from ssast.models.classifier import SSASTClassifier
from ssast.train.optim import param_groups

REPO = Path(__file__).resolve().parent.parent
torch.manual_seed(0)


def tiny(**kw) -> ModelConfig:
    base = dict(size="custom", dim=32, depth=3, heads=4, input_fdim=32, input_tdim=64, fshape=32, tshape=2, tstride=1)
    base.update(kw)
    return ModelConfig(**base)


def test_forward_intermediates_are_the_block_outputs_before_the_final_norm():
    enc = SSASTClassifier(tiny(), 3).eval().encoder
    x = torch.randn(2, 64, 32)
    with torch.no_grad():
        out, layers = enc.forward_intermediates(x)
        assert torch.equal(out, enc(x))
        assert len(layers) == 3 and all(h.shape == out.shape for h in layers)
        assert torch.allclose(enc.norm(layers[-1]), out)
        h = enc.add_positions(enc.patch_embed(x))
        for blk, got in zip(enc.blocks, layers):
            h = blk(h)
            assert torch.equal(h, got)


def test_equal_weights_give_the_mean_of_the_layers():
    model = SSASTClassifier(tiny(layer_weights=True), 3).eval()
    assert torch.equal(model.layer_weights.detach(), torch.zeros(3))  # softmax of zeros: equal weights
    x = torch.randn(2, 64, 32)
    with torch.no_grad():
        _, layers = model.encoder.forward_intermediates(x)
        feats = model.forward_features(x)
        assert feats.shape == (2, 2 + 63, 32)  # timm's meaning: every token, prefix first
        assert torch.allclose(feats, torch.stack(layers).mean(0), atol=1e-6)
        # other weights: the softmax-weighted sum
        model.layer_weights.copy_(torch.tensor([0.5, -1.0, 2.0]))
        w = torch.softmax(model.layer_weights, 0)
        assert torch.allclose(model.forward_features(x), sum(wi * h for wi, h in zip(w, layers)), atol=1e-6)
        assert torch.allclose(model(x), model.head(model.forward_features(x)[:, 2:].mean(1)), atol=1e-6)


def test_gradients_reach_the_layer_weights_and_the_unused_final_norm_is_frozen():
    model = SSASTClassifier(tiny(layer_weights=True, projector_dim=8), 5)
    model(torch.randn(2, 64, 32)).logsumexp(-1).sum().backward()
    g = model.layer_weights.grad
    assert g is not None and torch.isfinite(g).all() and g.abs().sum() > 0
    assert model.encoder.blocks[0].attn.qkv.weight.grad is not None  # the upstream trains
    assert not model.encoder.norm.weight.requires_grad and model.encoder.norm.weight.grad is None
    grouped = {id(p) for g in param_groups(model, OptimConfig()) for p in g["params"]}
    assert id(model.layer_weights) in grouped and id(model.encoder.norm.weight) not in grouped
    # SUPERB's head: Linear(D, k) then Linear(k, classes), nothing between
    assert [type(m).__name__ for m in model.head] == ["Linear", "Linear"]
    assert model.head[0].weight.shape == (8, 32) and model.head[1].weight.shape == (5, 8)


def test_flags_off_leave_the_model_as_it_was():
    torch.manual_seed(1)
    model = SSASTClassifier(tiny(), 4).eval()
    keys = set(model.state_dict())
    assert "layer_weights" not in keys and model.layer_weights is None
    assert {k for k in keys if not k.startswith("encoder.")} == {"head.0.weight", "head.0.bias", "head.1.weight",
                                                                 "head.1.bias"}
    assert isinstance(model.head[0], torch.nn.LayerNorm) and model.encoder.norm.weight.requires_grad
    x = torch.randn(2, 64, 32)
    with torch.no_grad():
        out = model.encoder(x)
        assert torch.equal(model.forward_features(x), out)
        assert torch.equal(model(x), model.head(out[:, 2:].mean(1)))
    # the flag only adds its one key: a checkpoint without it loads the rest unchanged
    on = SSASTClassifier(tiny(layer_weights=True), 4)
    assert set(on.state_dict()) == keys | {"layer_weights"}
    missing, unexpected = on.load_state_dict(model.state_dict(), strict=False)
    assert missing == ["layer_weights"] and unexpected == []


def test_voxceleb1_configs_load():
    authors = load_config(REPO / "configs/finetune/voxceleb1_frame.yaml", task="finetune")
    m, o = authors.model, authors.optim
    assert m.is_frame and (m.fstride, m.tstride) == (128, 1) and m.layer_weights and m.projector_dim == 256
    assert authors.audio.target_length == m.input_tdim == 1000
    assert (authors.audio.norm_mean, authors.audio.norm_std) == DATASET_STATS["audioset"]
    assert (o.optimizer, o.lr, o.betas, o.weight_decay, o.warmup_steps, o.schedule, o.grad_clip) == (
        "adam", 1e-4, [0.9, 0.999], 0.0, 0, "constant", 1.0)
    assert authors.data.batch_size * o.accum_steps == 32 and authors.train.epochs == 9
    a = authors.augment
    assert (a.freqm, a.timem, a.noise, a.mixup) == (0, 0, False, 0.0)
    assert authors.data.train == ["data/voxceleb1/train.json"] and authors.data.label_csv == "data/voxceleb1/labels.csv"
    ours = load_config(REPO / "configs/finetune/voxceleb1_frame_ssast_style.yaml", task="finetune")
    assert not ours.model.layer_weights and ours.model.projector_dim == 0 and ours.audio.target_length == 600
    assert ours.train.run_dir != authors.train.run_dir


def test_run_script_picks_the_recipe(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    (data / "train.json").write_text("{}")
    env = dict(os.environ, DRY_RUN="1", DATA=str(data), RUNS=str(tmp_path / "runs"), PYTHON="python")
    env.pop("VOXCELEB1_ROOT", None)

    def dry(recipe: str | None) -> subprocess.CompletedProcess:
        e = dict(env, **({"RECIPE": recipe} if recipe else {}))
        return subprocess.run(["bash", str(REPO / "finetune/voxceleb1/run.sh"), "scratch", "frame"], env=e,
                              capture_output=True, text=True)

    out = dry(None).stdout
    assert "voxceleb1_frame.yaml" in out and f"train.run_dir={tmp_path / 'runs' / 'frame'} " in out
    out = dry("ssast_style").stdout
    assert "voxceleb1_frame_ssast_style.yaml" in out and "frame_ssast_style" in out
    bad = dry("other")
    assert bad.returncode == 2 and "RECIPE must be" in bad.stderr


TINY = [
    "model.size=custom", "model.dim=32", "model.depth=2", "model.heads=2", "audio.target_length=64",
    "data.num_workers=0", "data.batch_size=4", "train.progress=none", "train.precision=fp32",
]


def test_finetune_with_layer_weights_through_the_cli(tmp_path, capsys):
    corpus = make_corpus(tmp_path / "corpus", pool=8, train_per_class=2, test_per_class=1, seconds=0.7)
    pre = tmp_path / "pre"
    assert main(["pretrain", *TINY, f"data.train=[{corpus.pool}]", "train.steps=2", f"train.run_dir={pre}",
                 "model.mask_patch=0.5"]) == 0
    ft = tmp_path / "ft"
    code = main(["finetune", *TINY, f"data.train=[{corpus.train}]", f"data.test=[{corpus.test}]",
                 f"data.label_csv={corpus.labels}", "train.epochs=1", f"train.run_dir={ft}", "optim.lr=1e-2",
                 "optim.warmup_steps=0", f"model.init={pre / 'final'}", "model.layer_weights=true",
                 "model.projector_dim=8"])
    err = capsys.readouterr().err
    assert code == 0, err

    from ssast.models.checkpoint import load_state
    from ssast.models.factory import load_pretrained

    model, meta = load_pretrained(ft / "final")
    assert meta.model.layer_weights and meta.model.projector_dim == 8
    state = load_state(ft / "final")
    assert state["layer_weights"].shape == (2,) and state["layer_weights"].abs().sum() > 0  # trained, and saved
    assert torch.equal(model.layer_weights.detach(), state["layer_weights"])
    # the frozen final norm is saved as it was loaded from the pretrained encoder
    assert torch.equal(state["encoder.norm.weight"], load_state(pre / "final")["encoder.norm.weight"])

    wavs = sorted(str(p) for p in (corpus.root / "audio").glob("test_*.wav"))[:2]
    assert main(["predict", str(ft / "final"), *wavs, "--top-k", "1", "--json"]) == 0
    preds = json.loads(capsys.readouterr().out)
    assert [p["file"] for p in preds] == wavs and all(len(p["top"]) == 1 for p in preds)
    assert main(["evaluate", str(ft / "final"), *TINY, f"data.test=[{corpus.test}]",
                 f"data.label_csv={corpus.labels}"]) == 0
    assert 0 <= json.loads(capsys.readouterr().out)["accuracy"] <= 1
