"""The `ssast` subcommands end to end on tiny synthetic data: pretrain -> finetune -> evaluate -> predict -> embed,
prepare -> pretrain from shards, stats, import-checkpoint, and one-line user errors."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from ssast.cli import main
from ssast.demo.run import make_corpus

TINY = [
    "model.size=custom", "model.dim=32", "model.depth=1", "model.heads=2", "model.input_tdim=64",
    "audio.target_length=64", "data.num_workers=0", "data.batch_size=4", "train.progress=none",
    "train.precision=fp32",
]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return make_corpus(tmp_path_factory.mktemp("cli"), pool=12, train_per_class=2, test_per_class=1, seconds=0.7)


def run(capsys, *args) -> tuple[int, str, str]:
    code = main([str(a) for a in args])
    out = capsys.readouterr()
    return code, out.out, out.err


def test_full_chain(corpus, tmp_path, capsys):
    pre = tmp_path / "pre"
    code, _, err = run(capsys, "pretrain", *TINY, f"data.train=[{corpus.pool}]", "train.steps=3",
                       f"train.run_dir={pre}", "model.mask_patch=0.5", "model.pretrain_encoder=visible")
    assert code == 0, err
    ft = tmp_path / "ft"
    code, out, err = run(capsys, "finetune", *TINY, f"data.train=[{corpus.train}]", f"data.test=[{corpus.test}]",
                         f"data.label_csv={corpus.labels}", "train.epochs=1", f"train.run_dir={ft}",
                         f"model.init={pre / 'final'}")
    assert code == 0, err
    assert "accuracy" in json.loads(out.strip().splitlines()[-1])

    code, out, err = run(capsys, "evaluate", ft / "final", *TINY, f"data.test=[{corpus.test}]",
                         f"data.label_csv={corpus.labels}", "--out", tmp_path / "m.json")
    assert code == 0, err
    metrics = json.loads((tmp_path / "m.json").read_text())
    assert metrics["num_clips"] == 6 and 0 <= metrics["accuracy"] <= 1
    assert metrics["accuracy"] == pytest.approx(json.loads((ft / "metrics.json").read_text())["final"]["accuracy"])

    # several checkpoints are evaluated as an ensemble (mean probabilities), with each model's own metrics beside
    code, out, err = run(capsys, "evaluate", ft / "final", ft / "last", *TINY, f"data.test=[{corpus.test}]",
                         f"data.label_csv={corpus.labels}")
    assert code == 0, err
    ens = json.loads(out)
    assert ens["ensemble_of"] == 2 and len(ens["single"]) == 2

    wavs = sorted(str(p) for p in (corpus.root / "audio").glob("test_*.wav"))[:3]
    code, out, err = run(capsys, "predict", ft / "final", *wavs, "--top-k", "2", "--json")
    assert code == 0, err
    preds = json.loads(out)
    assert [p["file"] for p in preds] == wavs
    for p in preds:
        assert len(p["top"]) == 2 and p["top"][0]["score"] >= p["top"][1]["score"]
        assert p["top"][0]["label"] in {"rising chirp", "falling chirp", "harmonic tone", "amplitude-modulated tone",
                                        "click train", "band-limited noise burst"}

    # embeddings from the fine-tuned model and from the visible-token pretraining checkpoint (encoder only)
    for ckpt, name in ((ft / "final", "ft"), (pre / "final", "pre")):
        code, out, err = run(capsys, "embed", ckpt, *wavs, "--out", tmp_path / name)
        assert code == 0, err
        files = sorted((tmp_path / name).glob("*.npy"))
        assert len(files) == 3 and np.load(files[0]).shape == (32,)
    code, _, err = run(capsys, "embed", pre / "final", wavs[0], "--out", tmp_path / "tok", "--tokens")
    assert code == 0, err
    assert np.load(next((tmp_path / "tok").glob("*.npy"))).shape == (8 * 4, 32)  # 128x64 / 16x16 tokens

    # predicting needs a classifier: a pretraining checkpoint gets a clear one-line error
    code, _, err = run(capsys, "predict", pre / "final", wavs[0])
    assert code == 2 and "fine-tune it first" in err and "Traceback" not in err


def test_prepare_then_pretrain_from_shards(corpus, tmp_path, capsys):
    shards = tmp_path / "shards"
    code, out, err = run(capsys, "prepare", corpus.pool, shards, "--shard-size", "5", "--workers", "1")
    assert code == 0, err
    assert "3 shards, 12 clips" in out
    code, _, err = run(capsys, "pretrain", *TINY, f"data.train=[{shards}]", "train.steps=4",
                       f"train.run_dir={tmp_path / 'run'}", "model.mask_patch=0.5")
    assert code == 0, err
    assert json.loads((tmp_path / "run" / "metrics.json").read_text())["steps"] == 4


def test_stats_prints_mean_and_std(corpus, capsys):
    code, out, err = run(capsys, "stats", *TINY, f"data.train=[{corpus.train}]")
    assert code == 0, err
    stats = json.loads(out)
    assert -20 < stats["norm_mean"] < 5 and 0 < stats["norm_std"] < 20
    assert "audio.norm_mean=" in err


def test_import_checkpoint_cli(tmp_path, capsys):
    """An authors'-layout pretrained state dict (their key names) converts to a loadable checkpoint."""
    d, depth, grid = 64, 2, (8, 4)
    n = grid[0] * grid[1]
    sd = {"module.v.cls_token": torch.randn(1, 1, d), "module.v.dist_token": torch.randn(1, 1, d),
          "module.v.pos_embed": torch.randn(1, n + 2, d),
          "module.v.patch_embed.proj.weight": torch.randn(d, 1, 16, 16), "module.v.patch_embed.proj.bias": torch.randn(d),
          "module.v.norm.weight": torch.ones(d), "module.v.norm.bias": torch.zeros(d),
          "module.mask_embed": torch.randn(1, 1, d), "module.p_input_fdim": torch.tensor(128),
          "module.p_input_tdim": torch.tensor(64)}
    for i in range(depth):
        p = f"module.v.blocks.{i}."
        for name, shape in (("norm1", (d,)), ("norm2", (d,)), ("attn.qkv", (3 * d, d)), ("attn.proj", (d, d)),
                            ("mlp.fc1", (4 * d, d)), ("mlp.fc2", (d, 4 * d))):
            sd[p + name + ".weight"] = torch.randn(*shape) * 0.02
            sd[p + name + ".bias"] = torch.zeros(shape[0])
    for head in ("cpredlayer", "gpredlayer"):
        sd[f"module.{head}.0.weight"], sd[f"module.{head}.0.bias"] = torch.randn(d, d), torch.zeros(d)
        sd[f"module.{head}.2.weight"], sd[f"module.{head}.2.bias"] = torch.randn(256, d), torch.zeros(256)
    src = tmp_path / "SSAST-Tiny-Patch-400.pth"
    torch.save(sd, src)
    code, out, err = run(capsys, "import-checkpoint", src, tmp_path / "converted")
    assert code == 0, err
    assert "pretrain, dim 64, depth 2, patch 16x16" in out
    from ssast.models.factory import load_pretrained

    model, meta = load_pretrained(tmp_path / "converted")
    assert torch.equal(model.encoder.prefix_tokens[0, 1], sd["module.v.dist_token"][0, 0])

    junk = tmp_path / "junk.pth"
    torch.save({"a": torch.zeros(1)}, junk)
    code, _, err = run(capsys, "import-checkpoint", junk, tmp_path / "x")
    assert code == 2 and str(junk) in err


def test_missing_data_file_is_reported_before_training(tmp_path, capsys):
    lst = tmp_path / "list.json"
    lst.write_text(json.dumps({"data": [{"wav": "nope1.wav"}, {"wav": "nope2.wav"}]}))
    code, _, err = run(capsys, "pretrain", *TINY, f"data.train=[{lst}]", "train.steps=2", "model.mask_patch=0.5",
                       f"train.run_dir={tmp_path / 'r'}")
    assert code == 2 and "nope1.wav" in err and "2" in err


def test_demo_quick_runs_every_model(tmp_path, capsys):
    code, out, err = run(capsys, "demo", "--out", tmp_path / "demo", "--quick")
    assert code == 0, err
    results = json.loads((tmp_path / "demo" / "demo_results.json").read_text())
    rows = results["models"]
    assert [r["model"] for r in rows] == ["patch", "frame", "patch-visible", "scratch (patch)"]
    for r in rows:
        assert 0.0 <= r["downstream_acc"] <= 1.0
    assert "| patch-visible |" in out and "tensorboard --logdir" in out
    # the label-efficiency curve: patch encoder and scratch at 2, 6 and 12 clips per class, the 6 being the table's
    curve = {(r["init"], r["per_class"]): r["accuracy"] for r in results["label_efficiency"]}
    assert sorted(curve) == [(i, k) for i in ("patch", "scratch") for k in (2, 6, 12)]
    assert curve["patch", 6] == rows[0]["downstream_acc"] and curve["scratch", 6] == rows[3]["downstream_acc"]
    assert (tmp_path / "demo" / "label_efficiency.png").stat().st_size > 0 and "| events (17%) | 12 |" in out
