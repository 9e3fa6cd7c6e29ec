"""The fine-tuning classifier: shapes, pooling, pretrained-encoder loading with new strides, layer-wise lr decay."""
import dataclasses

import pytest
import torch
from timm.optim import param_groups_layer_decay

from ssast.config import ModelConfig
from ssast.models.classifier import SSASTClassifier, load_encoder_into
from ssast.models.posembed import WeightMismatchError, adapt_pos_embed
from ssast.models.pretrain import SSASTPretrainModel

torch.manual_seed(0)


def tiny(**kw) -> ModelConfig:
    base = dict(size="custom", dim=32, depth=2, heads=4, input_fdim=32, input_tdim=64, mask_patch=3)
    base.update(kw)
    return ModelConfig(**base)


@pytest.mark.parametrize(
    "kw,tokens",
    [
        (dict(), 2 * 4),  # 16x16 patches, no overlap
        (dict(fstride=10, tstride=10), 2 * 5),  # (32-16)//10+1, (64-16)//10+1
        (dict(fshape=32, tshape=2), 32),  # frame model, no overlap
        (dict(fshape=32, tshape=2, tstride=1), 63),  # frame model, time stride 1
    ],
)
def test_shapes(kw, tokens):
    model = SSASTClassifier(tiny(**kw), num_classes=5).eval()
    x = torch.randn(3, 64, 32)
    assert model(x).shape == (3, 5)
    assert model.forward_head(model.forward_features(x), pre_logits=True).shape == (3, 32)
    assert model.patch_tokens(model.forward_features(x)).shape == (3, tokens, 32)
    assert model.encoder.num_patches == tokens


@pytest.mark.parametrize("num_prefix", [1, 2])
def test_pooling_picks_the_right_tokens(num_prefix):
    x = torch.randn(2, 64, 32)
    mean_model = SSASTClassifier(tiny(num_prefix=num_prefix, pooling="mean"), 3).eval()
    cls_model = SSASTClassifier(tiny(num_prefix=num_prefix, pooling="cls"), 3).eval()
    cls_model.load_state_dict(mean_model.state_dict())
    with torch.no_grad():
        out = mean_model.encoder(x)
        p = num_prefix
        assert torch.equal(mean_model.forward_features(x), out)  # timm's meaning: every token's output
        mean_emb, cls_emb = (m.forward_head(m.forward_features(x), pre_logits=True) for m in (mean_model, cls_model))
        assert torch.allclose(mean_emb, out[:, p:].mean(1), atol=1e-6)
        assert torch.allclose(cls_emb, out[:, :p].mean(1), atol=1e-6)
        assert not torch.allclose(mean_emb, cls_emb, atol=1e-3)
        assert torch.allclose(mean_model.patch_tokens(mean_model.forward_features(x)), out[:, p:])
        logits = mean_model(x)
        assert torch.allclose(logits, mean_model.head(out[:, p:].mean(1)), atol=1e-6)


def test_load_pretrained_encoder_with_other_stride_and_length():
    src_cfg = tiny()  # pretraining: 16x16 stride 16 on 32x64 -> 2x4 grid
    pre = SSASTPretrainModel(src_cfg)
    dst_cfg = tiny(fstride=10, tstride=10, input_tdim=112, num_prefix=2)  # 2x10 grid: time interpolated
    model = SSASTClassifier(dst_cfg, 4)
    info = load_encoder_into(model, pre.encoder.state_dict(), src_cfg)
    enc, src = model.encoder, pre.encoder
    assert torch.equal(enc.patch_embed.proj.weight, src.patch_embed.proj.weight)
    assert torch.equal(enc.patch_embed.proj.bias, src.patch_embed.proj.bias)
    assert enc.patch_embed.proj.stride == (10, 10)
    assert torch.equal(enc.prefix_tokens, src.prefix_tokens)
    for a, b in zip(enc.blocks.state_dict().values(), src.blocks.state_dict().values()):
        assert torch.equal(a, b)
    assert torch.equal(enc.norm.weight, src.norm.weight)
    expected = adapt_pos_embed(src.pos_embed.detach(), (2, 4), (2, 10), 2, 2)
    assert torch.equal(enc.pos_embed.detach(), expected)
    assert "2x4 -> 2x10" in info
    # Prefixed keys (a whole pretraining state) restricted to the encoder work too; the model runs.
    state = {k: v for k, v in pre.state_dict().items() if k.startswith("encoder.")}
    load_encoder_into(model, state, src_cfg)
    assert torch.isfinite(model(torch.randn(2, 112, 32))).all()


def test_load_changes_prefix_count_and_crops():
    src_cfg = tiny(num_prefix=2, input_tdim=128)  # 2x8 grid
    pre = SSASTPretrainModel(src_cfg)
    model = SSASTClassifier(tiny(num_prefix=1, input_tdim=48), 2)  # 2x3 grid: time cropped, start 4-1=3
    info = load_encoder_into(model, pre.encoder.state_dict(), src_cfg)
    assert torch.equal(model.encoder.prefix_tokens, pre.encoder.prefix_tokens[:, :1])
    grid = pre.encoder.pos_embed.detach()[0, 2:].reshape(2, 8, -1)
    assert torch.equal(model.encoder.pos_embed.detach()[0, 1:].reshape(2, 3, -1), grid[:, 3:6])
    assert "prefix tokens 2 -> 1" in info


def test_load_errors_are_clear():
    src_cfg = tiny()
    state = SSASTPretrainModel(src_cfg).encoder.state_dict()
    with pytest.raises(WeightMismatchError, match="patch shape 16x16"):
        load_encoder_into(SSASTClassifier(tiny(fshape=32, tshape=2), 2), state, src_cfg)
    bad = dict(state)
    del bad["blocks.1.mlp.fc2.bias"]
    bad["extra.weight"] = torch.zeros(1)
    with pytest.raises(WeightMismatchError) as e:
        load_encoder_into(SSASTClassifier(tiny(), 2), bad, src_cfg)
    assert "blocks.1.mlp.fc2.bias" in str(e.value) and "extra.weight" in str(e.value)
    with pytest.raises(WeightMismatchError, match="64-dim"):
        load_encoder_into(SSASTClassifier(tiny(dim=64), 2), state, src_cfg)
    deeper = SSASTClassifier(tiny(depth=3), 2)
    with pytest.raises(WeightMismatchError, match="blocks.2"):
        load_encoder_into(deeper, state, src_cfg)


def test_layer_decay_groups_with_timm():
    model = SSASTClassifier(tiny(depth=3), 2)
    groups = param_groups_layer_decay(
        model, weight_decay=0.05, no_weight_decay_list=model.no_weight_decay(), layer_decay=0.5
    )
    names = {id(p): n for n, p in model.named_parameters()}
    scale = {names[id(p)]: g["lr_scale"] for g in groups for p in g["params"]}
    decay = {names[id(p)]: g["weight_decay"] for g in groups for p in g["params"]}
    assert set(scale) == set(names.values())  # every parameter in exactly one group
    assert scale["head.1.weight"] == 1.0
    s_stem = scale["encoder.pos_embed"]
    assert s_stem == scale["encoder.prefix_tokens"] == scale["encoder.patch_embed.proj.weight"]
    b = [scale[f"encoder.blocks.{i}.attn.qkv.weight"] for i in range(3)]
    # timm convention: the final norm joins the last block; the head is the top group.
    assert s_stem < b[0] < b[1] < b[2] == scale["encoder.norm.weight"] < scale["head.0.weight"] == 1.0
    assert b[1] == pytest.approx(2 * b[0])
    assert decay["encoder.pos_embed"] == 0 and decay["encoder.prefix_tokens"] == 0
    assert decay["encoder.blocks.0.attn.qkv.weight"] == 0.05
    # The groups drive a real optimizer step.
    opt = torch.optim.AdamW(groups, lr=1e-3)
    model(torch.randn(2, 64, 32)).sum().backward()
    before = model.encoder.blocks[0].attn.qkv.weight.detach().clone()
    opt.step()
    assert not torch.equal(before, model.encoder.blocks[0].attn.qkv.weight)


def test_bad_pooling_and_classes():
    with pytest.raises(ValueError, match="pooling"):
        SSASTClassifier(dataclasses.replace(tiny(), pooling="max"), 2)
    with pytest.raises(ValueError, match="num_classes"):
        SSASTClassifier(tiny(), 0)
