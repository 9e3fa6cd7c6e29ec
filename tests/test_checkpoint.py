"""Our checkpoint format: round trips, strict loading errors, atomic saves, classifier init (ours, DeiT, scratch)."""
import dataclasses
import json
import os

import pytest
import safetensors.torch
import timm
import torch

import ssast.atomic as atomic
from ssast.config import AudioConfig, ModelConfig
from ssast.serve.inference import audio_config_of
from ssast.models.checkpoint import CheckpointError, CheckpointMeta, load_state, read_checkpoint_meta, save_checkpoint
from ssast.models.factory import build_classifier, load_pretrained
from ssast.models.classifier import SSASTClassifier
from ssast.models.posembed import adapt_pos_embed
from ssast.models.pretrain import SSASTPretrainModel

torch.manual_seed(0)


def tiny(**kw) -> ModelConfig:
    base = dict(size="custom", dim=32, depth=2, heads=4, input_fdim=32, input_tdim=64, mask_patch=3)
    base.update(kw)
    return ModelConfig(**base)


def test_classifier_round_trip(tmp_path):
    cfg = tiny(fstride=10, tstride=10, pooling="cls")
    model = SSASTClassifier(cfg, 3).eval()
    out = save_checkpoint(tmp_path / "clf", model, CheckpointMeta(
        "classifier", cfg, labels=["a", "b", "c"], label_ids=["/m/1", "/m/2", "/m/3"],
        audio=AudioConfig(norm_mean=-4.5, norm_std=4.25), epoch=7,
    ))
    assert sorted(p.name for p in out.iterdir()) == ["model.json", "model.safetensors"]
    loaded, meta = load_pretrained(tmp_path / "clf")
    assert isinstance(loaded, SSASTClassifier) and not loaded.training
    assert meta.format == "ssast" and meta.version == 2 and meta.kind == "classifier"
    assert meta.num_classes == 3 and meta.labels == ["a", "b", "c"] and meta.label_ids[2] == "/m/3"
    assert (meta.audio.norm_mean, meta.audio.norm_std) == (-4.5, 4.25) and (meta.epoch, meta.step) == (7, None)
    assert meta.model.fstride == 10 and meta.model.pooling == "cls"
    x = torch.randn(2, 64, 32)
    with torch.no_grad():
        assert torch.equal(model(x), loaded(x))
    # model.json or model.safetensors paths name the same checkpoint.
    assert read_checkpoint_meta(tmp_path / "clf" / "model.json") == meta
    assert set(load_state(tmp_path / "clf" / "model.safetensors")) == set(model.state_dict())


@pytest.mark.parametrize("encoder_mode", ["all", "visible"])
def test_pretrain_round_trip(tmp_path, encoder_mode):
    cfg = tiny(pretrain_encoder=encoder_mode, decoder_dim=16, decoder_heads=2, decoder_depth=1)
    model = SSASTPretrainModel(cfg).eval()
    save_checkpoint(tmp_path / "pt", model, CheckpointMeta("pretrain", cfg))
    loaded, meta = load_pretrained(tmp_path / "pt")
    assert isinstance(loaded, SSASTPretrainModel) and meta.num_classes == 0
    x = torch.randn(2, 64, 32)
    mask = torch.zeros(2, 8, dtype=torch.bool)
    mask[:, [1, 4, 6]] = True
    with torch.no_grad():
        a, b = model(x, mask=mask), loaded(x, mask=mask)
    assert torch.equal(a.loss, b.loss) and torch.equal(a.nce_pred, b.nce_pred) and torch.equal(a.mse_pred, b.mse_pred)


def test_save_unwraps_and_has_no_module_prefix(tmp_path):
    cfg = tiny()
    model = SSASTClassifier(cfg, 2)
    save_checkpoint(tmp_path / "c", torch.nn.DataParallel(model), CheckpointMeta("classifier", cfg))
    keys = load_state(tmp_path / "c")
    assert keys and not any(k.startswith("module.") for k in keys)


def test_strict_loading_lists_keys_and_names_file(tmp_path):
    cfg = tiny()
    save_checkpoint(tmp_path / "c", SSASTClassifier(cfg, 2), CheckpointMeta("classifier", cfg))
    f = tmp_path / "c" / "model.safetensors"
    state = safetensors.torch.load_file(str(f))
    del state["encoder.blocks.1.attn.qkv.weight"]
    state["encoder.extra_token"] = torch.zeros(3)
    state["head.1.bias"] = torch.zeros(5)
    safetensors.torch.save_file(state, str(f))
    with pytest.raises(CheckpointError) as e:
        load_pretrained(tmp_path / "c")
    msg = str(e.value)
    assert str(f) in msg
    assert "encoder.blocks.1.attn.qkv.weight" in msg and "encoder.extra_token" in msg and "head.1.bias" in msg


def test_bad_metadata_is_a_clear_error(tmp_path):
    with pytest.raises(CheckpointError, match="not found"):
        load_pretrained(tmp_path / "nothing")
    d = tmp_path / "c"
    d.mkdir()
    (d / "model.json").write_text(json.dumps({"format": "other"}))
    with pytest.raises(CheckpointError, match="not an ssast checkpoint"):
        read_checkpoint_meta(d)
    (d / "model.json").write_text(json.dumps({"format": "ssast", "version": 9, "kind": "pretrain", "model": {}}))
    with pytest.raises(CheckpointError, match="newer"):
        read_checkpoint_meta(d)
    (d / "model.json").write_text(json.dumps({"format": "ssast", "version": 1, "kind": "pretrain",
                                              "model": {"dimm": 3}}))
    with pytest.raises(CheckpointError, match="dimm"):
        load_pretrained(d)



def test_version_1_layout_still_reads(tmp_path):
    """model.json as version 1 wrote it (feature settings and provenance in "extra", statistics in "norm") reads into
    the same typed fields, and the weights beside it load."""
    cfg = tiny(fstride=10, tstride=10)
    model = SSASTClassifier(cfg, 2).eval()
    save_checkpoint(tmp_path / "c", model, CheckpointMeta("classifier", cfg))
    audio = {"sample_rate": 16000, "num_mel_bins": 32, "target_length": 64, "crop": "random", "norm_mean": -4.2677393,
             "norm_std": 4.5689974, "fbank_on": "auto"}
    v1 = {"format": "ssast", "version": 1, "kind": "classifier", "model": dataclasses.asdict(cfg), "num_classes": 2,
          "labels": ["dog", "rain"], "label_ids": ["/m/a", "/m/b"], "norm": {"mean": -6.5, "std": 5.25},
          "extra": {"step": 40, "epoch": 2, "task": "finetune", "audio": audio, "multilabel": True}}
    (tmp_path / "c" / "model.json").write_text(json.dumps(v1, indent=2) + "\n")
    loaded, meta = load_pretrained(tmp_path / "c")
    with torch.no_grad():
        x = torch.randn(2, 64, 32)
        assert torch.equal(model(x), loaded(x))
    assert meta.version == 1 and meta.kind == "classifier" and meta.num_classes == 2 and meta.model == cfg
    assert meta.labels == ["dog", "rain"] and meta.label_ids == ["/m/a", "/m/b"] and meta.multilabel
    assert (meta.step, meta.epoch, meta.task, meta.imported_from) == (40, 2, "finetune", None)
    # "norm" wins over extra.audio, as the version-1 reader had it; inference crops at the start
    assert meta.audio == AudioConfig(num_mel_bins=32, target_length=64, crop="random", norm_mean=-6.5, norm_std=5.25)
    assert audio_config_of(meta) == AudioConfig(num_mel_bins=32, target_length=64, norm_mean=-6.5, norm_std=5.25,
                                                crop="start")
    # an imported checkpoint's layout; then one with statistics only, and one with no feature settings at all
    v1["extra"] = {"imported_from": "SSAST-Base-Patch-400.pth", "audio": audio}
    del v1["norm"]
    (tmp_path / "c" / "model.json").write_text(json.dumps(v1))
    meta = read_checkpoint_meta(tmp_path / "c")
    assert meta.imported_from == "SSAST-Base-Patch-400.pth" and meta.audio.norm_mean == -4.2677393
    assert meta.step is None and not meta.multilabel
    v1.update(norm={"mean": -1.0, "std": 2.0}, extra={"epoch": 7})
    (tmp_path / "c" / "model.json").write_text(json.dumps(v1))
    meta = read_checkpoint_meta(tmp_path / "c")
    assert meta.audio == AudioConfig(norm_mean=-1.0, norm_std=2.0) and meta.epoch == 7
    v1.update(norm=None, extra={})
    (tmp_path / "c" / "model.json").write_text(json.dumps(v1))
    meta = read_checkpoint_meta(tmp_path / "c")
    assert meta.audio is None and audio_config_of(meta) == AudioConfig(crop="start")
    # a damaged field is one line naming the file and the key
    v1["extra"] = {"audio": {**audio, "target_length": "long"}}
    (tmp_path / "c" / "model.json").write_text(json.dumps(v1))
    with pytest.raises(CheckpointError, match=r"model.json: invalid metadata: audio.target_length"):
        read_checkpoint_meta(tmp_path / "c")


def _weights(d):
    return load_state(d)["head.1.weight"]


def test_failed_save_keeps_the_old_checkpoint(tmp_path, monkeypatch):
    cfg = tiny()
    old, new = SSASTClassifier(cfg, 2), SSASTClassifier(cfg, 2)
    save_checkpoint(tmp_path / "c", old, CheckpointMeta("classifier", cfg))

    def boom(*a, **k):
        raise OSError("disk full")

    monkeypatch.setattr(safetensors.torch, "save_file", boom)
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint(tmp_path / "c", new, CheckpointMeta("classifier", cfg))
    monkeypatch.undo()
    assert torch.equal(_weights(tmp_path / "c"), old.head[1].weight)
    assert sorted(os.listdir(tmp_path)) == ["c"]  # no temporary directory left behind
    load_pretrained(tmp_path / "c")
    # A successful save replaces it completely.
    save_checkpoint(tmp_path / "c", new, CheckpointMeta("classifier", cfg))
    assert torch.equal(_weights(tmp_path / "c"), new.head[1].weight)
    assert sorted(os.listdir(tmp_path)) == ["c"]


def test_fallback_replace_and_crash_between_renames(tmp_path, monkeypatch):
    cfg = tiny()
    a, b, c = (SSASTClassifier(cfg, 2) for _ in range(3))
    monkeypatch.setattr(atomic, "_exchange", lambda x, y: False)  # systems without renameat2
    save_checkpoint(tmp_path / "c", a, CheckpointMeta("classifier", cfg))
    save_checkpoint(tmp_path / "c", b, CheckpointMeta("classifier", cfg))
    assert torch.equal(_weights(tmp_path / "c"), b.head[1].weight)
    assert sorted(os.listdir(tmp_path)) == ["c"]
    # Crash after the old checkpoint was moved aside but before the new one took its place.
    real_replace = os.replace
    calls = []

    def flaky(src, dst):
        calls.append(dst)
        if len(calls) == 2:
            raise OSError("power cut")
        return real_replace(src, dst)

    monkeypatch.setattr(atomic.os, "replace", flaky)
    with pytest.raises(OSError, match="power cut"):
        save_checkpoint(tmp_path / "c", c, CheckpointMeta("classifier", cfg))
    monkeypatch.undo()
    assert not (tmp_path / "c").exists()
    model, _ = load_pretrained(tmp_path / "c")  # the old, complete checkpoint is found beside the path
    assert torch.equal(model.head[1].weight, b.head[1].weight)
    # The next successful save takes the path again and clears the copy left aside.
    save_checkpoint(tmp_path / "c", c, CheckpointMeta("classifier", cfg))
    assert torch.equal(_weights(tmp_path / "c"), c.head[1].weight)
    assert sorted(os.listdir(tmp_path)) == ["c"]


def test_build_classifier_scratch_and_from_our_pretrain(tmp_path):
    src_cfg = tiny()
    pre = SSASTPretrainModel(src_cfg)
    save_checkpoint(tmp_path / "pt", pre, CheckpointMeta("pretrain", src_cfg))
    cfg = tiny(fstride=10, tstride=10, input_tdim=96)
    model, info = build_classifier(cfg, 4, init="scratch")
    assert "random" in info and model.head[1].out_features == 4
    model, info = build_classifier(cfg, 4, init=str(tmp_path / "pt"))
    assert torch.equal(model.encoder.patch_embed.proj.weight, pre.encoder.patch_embed.proj.weight)
    assert torch.equal(model.encoder.blocks[1].mlp.fc2.weight, pre.encoder.blocks[1].mlp.fc2.weight)
    assert model.encoder.pos_embed.shape == (1, 2 + 2 * 9, 32)
    for dropped in ("mask_embed", "nce_head", "mse_head"):
        assert dropped in info
    # cfg.init is the default source; a classifier checkpoint can seed another classifier.
    save_checkpoint(tmp_path / "clf", model, CheckpointMeta("classifier", cfg))
    cfg2 = tiny(init=str(tmp_path / "clf"))
    model2, info = build_classifier(cfg2, 7)
    assert torch.equal(model2.encoder.blocks[0].attn.qkv.weight, pre.encoder.blocks[0].attn.qkv.weight)
    assert "head" in info and model2.head[1].out_features == 7
    with pytest.raises(CheckpointError, match="not found"):
        build_classifier(cfg, 2, init=str(tmp_path / "missing"))
    with pytest.raises(CheckpointError, match="patch shape"):
        build_classifier(tiny(fshape=32, tshape=2), 2, init=str(tmp_path / "pt"))


@pytest.mark.parametrize("suffix", [".pth", ".safetensors"])
def test_deit_init_from_local_file(tmp_path, suffix):
    deit = timm.create_model("deit_tiny_distilled_patch16_224", pretrained=False)
    sd = deit.state_dict()
    f = tmp_path / f"deit{suffix}"
    if suffix == ".pth":
        torch.save({"model": sd}, f)  # DeiT release files wrap the state in {"model": ...}
    else:
        safetensors.torch.save_file({k: v.contiguous() for k, v in sd.items()}, str(f))
    cfg = ModelConfig(size="tiny", fstride=10, tstride=10, input_fdim=128, input_tdim=256)  # 12 x 25 grid
    model, info = build_classifier(cfg, 5, init=f"imagenet:{f}")
    enc = model.encoder
    assert torch.allclose(enc.patch_embed.proj.weight, sd["patch_embed.proj.weight"].sum(1, keepdim=True))
    assert torch.equal(enc.patch_embed.proj.bias, sd["patch_embed.proj.bias"])
    assert torch.equal(enc.prefix_tokens, torch.cat([sd["cls_token"], sd["dist_token"]], 1))
    assert torch.equal(enc.blocks[11].mlp.fc1.weight, sd["blocks.11.mlp.fc1.weight"])
    assert torch.equal(enc.norm.bias, sd["norm.bias"])
    # 14x14 image grid -> frequency cropped to 12 (start 7 - 6 = 1), time interpolated to 25.
    assert torch.allclose(enc.pos_embed, adapt_pos_embed(sd["pos_embed"], (14, 14), (12, 25), 2, 2))
    grid = enc.pos_embed.detach()[0, 2:].reshape(12, 25, -1)
    assert torch.equal(grid[:, 0], torch.nn.functional.interpolate(
        sd["pos_embed"][:, 2:].reshape(1, 14, 14, -1).permute(0, 3, 1, 2)[:, :, 1:13], size=(12, 25),
        mode="bilinear", align_corners=False)[0, :, :, 0].T)
    assert "head" in info
    with torch.no_grad():
        assert torch.isfinite(model.eval()(torch.randn(2, 256, 128))).all()


def test_deit_errors(tmp_path):
    deit = timm.create_model("deit_tiny_distilled_patch16_224", pretrained=False)
    f = tmp_path / "deit.pth"
    torch.save(deit.state_dict(), f)
    with pytest.raises(CheckpointError, match="16x16"):
        build_classifier(ModelConfig(size="tiny", fshape=128, tshape=2, input_tdim=128), 2, init=f"imagenet:{f}")
    with pytest.raises(CheckpointError, match="192-dim"):
        build_classifier(ModelConfig(size="small", input_tdim=128), 2, init=f"imagenet:{f}")
    with pytest.raises(CheckpointError, match="not found"):
        build_classifier(ModelConfig(size="tiny", input_tdim=128), 2, init=f"imagenet:{tmp_path / 'none.pth'}")
    (tmp_path / "junk.pth").write_bytes(b"not a zip")
    with pytest.raises(CheckpointError, match="junk.pth"):
        build_classifier(ModelConfig(size="tiny", input_tdim=128), 2, init=f"imagenet:{tmp_path / 'junk.pth'}")


def test_imagenet_timm_offline_is_a_clear_error(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    import huggingface_hub.constants as hc

    monkeypatch.setattr(hc, "HF_HUB_OFFLINE", True, raising=False)
    with pytest.raises(CheckpointError, match="imagenet:FILE|imagenet:/path"):
        build_classifier(ModelConfig(size="tiny", input_tdim=128), 2, init="imagenet:timm")
