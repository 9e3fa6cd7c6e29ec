"""Import of the authors' checkpoint layout: our converted models compute what their models compute.

The reference below re-implements the authors' forward passes from the documented facts (SSAST_FACTS.md and
issue 2), with their tensor names, in plain PyTorch, independent of timm and of our model code.
"""
import json

import pytest
import torch
import torch.nn.functional as F

from ssast.models.authors import convert_authors_checkpoint
from ssast.models.checkpoint import CheckpointError
from ssast.models.factory import build_classifier, import_authors_checkpoint, load_pretrained
from ssast.models.classifier import SSASTClassifier, load_state_strict
from ssast.models.posembed import WeightMismatchError
from ssast.models.pretrain import SSASTPretrainModel

ATOL = 1e-5


def authors_state(dim, depth, fshape, tshape, n_tokens, *, pretrain, num_classes=5, p_input=None, seed=0):
    """A DataParallel-style state dict in the authors' layout, random tensors of moderate scale."""
    g = torch.Generator().manual_seed(seed)

    def r(*shape, scale=0.1, mean=0.0):
        return mean + scale * torch.randn(*shape, generator=g)

    sd = {
        "v.cls_token": r(1, 1, dim, scale=0.5),
        "v.dist_token": r(1, 1, dim, scale=0.5),
        "v.pos_embed": r(1, n_tokens + 2, dim, scale=0.5),
        "v.patch_embed.proj.weight": r(dim, 1, fshape, tshape, scale=0.05),
        "v.patch_embed.proj.bias": r(dim),
        "v.norm.weight": r(dim, mean=1.0),
        "v.norm.bias": r(dim),
        "v.head.weight": r(1000, dim),
        "v.head.bias": r(1000),
        "v.head_dist.weight": r(1000, dim),
        "v.head_dist.bias": r(1000),
    }
    for i in range(depth):
        p = f"v.blocks.{i}."
        sd.update({
            p + "norm1.weight": r(dim, mean=1.0), p + "norm1.bias": r(dim),
            p + "attn.qkv.weight": r(3 * dim, dim), p + "attn.qkv.bias": r(3 * dim),
            p + "attn.proj.weight": r(dim, dim), p + "attn.proj.bias": r(dim),
            p + "norm2.weight": r(dim, mean=1.0), p + "norm2.bias": r(dim),
            p + "mlp.fc1.weight": r(4 * dim, dim), p + "mlp.fc1.bias": r(4 * dim),
            p + "mlp.fc2.weight": r(dim, 4 * dim), p + "mlp.fc2.bias": r(dim),
        })
    patch_dim = fshape * tshape
    if pretrain:
        for head in ("cpredlayer", "gpredlayer"):
            sd.update({
                f"{head}.0.weight": r(dim, dim), f"{head}.0.bias": r(dim),
                f"{head}.2.weight": r(patch_dim, dim), f"{head}.2.bias": r(patch_dim),
            })
        sd["mask_embed"] = r(1, 1, dim, scale=0.5)
        if p_input is not None:
            sd["p_input_fdim"] = torch.tensor(p_input[0])
            sd["p_input_tdim"] = torch.tensor(p_input[1])
    else:
        sd.update({
            "mlp_head.0.weight": r(dim, mean=1.0), "mlp_head.0.bias": r(dim),
            "mlp_head.1.weight": r(num_classes, dim), "mlp_head.1.bias": r(num_classes),
        })
    return {"module." + k: v for k, v in sd.items()}


# ---- the authors' forward, from the documented facts ------------------------------------------------------------


def ref_block(x, sd, p, heads):
    B, L, D = x.shape
    h = F.layer_norm(x, (D,), sd[p + "norm1.weight"], sd[p + "norm1.bias"], eps=1e-6)
    qkv = F.linear(h, sd[p + "attn.qkv.weight"], sd[p + "attn.qkv.bias"])
    q, k, v = qkv.reshape(B, L, 3, heads, D // heads).permute(2, 0, 3, 1, 4)
    attn = ((q @ k.transpose(-2, -1)) * (D // heads) ** -0.5).softmax(dim=-1)
    a = (attn @ v).transpose(1, 2).reshape(B, L, D)
    x = x + F.linear(a, sd[p + "attn.proj.weight"], sd[p + "attn.proj.bias"])
    h = F.layer_norm(x, (D,), sd[p + "norm2.weight"], sd[p + "norm2.bias"], eps=1e-6)
    h = F.linear(F.gelu(F.linear(h, sd[p + "mlp.fc1.weight"], sd[p + "mlp.fc1.bias"])),
                 sd[p + "mlp.fc2.weight"], sd[p + "mlp.fc2.bias"])
    return x + h


def ref_encode(sd, x, stride, heads, mask_index=None):
    """x (B,T,F) -> unsqueeze(1).transpose(2,3) -> conv -> flatten(2).transpose(1,2) -> mask -> cat + pos -> blocks."""
    sd = {k[len("module."):]: v for k, v in sd.items()}
    x = x.unsqueeze(1).transpose(2, 3)
    x = F.conv2d(x, sd["v.patch_embed.proj.weight"], sd["v.patch_embed.proj.bias"], stride=stride)
    x = x.flatten(2).transpose(1, 2)
    B, _, D = x.shape
    if mask_index is not None:
        x = x.clone()
        for i in range(B):
            x[i, mask_index[i]] = sd["mask_embed"][0, 0]
    x = torch.cat([sd["v.cls_token"].expand(B, -1, -1), sd["v.dist_token"].expand(B, -1, -1), x], dim=1)
    x = x + sd["v.pos_embed"]
    depth = len({k.split(".")[2] for k in sd if k.startswith("v.blocks.")})
    for i in range(depth):
        x = ref_block(x, sd, f"v.blocks.{i}.", heads)
    x = F.layer_norm(x, (D,), sd["v.norm.weight"], sd["v.norm.bias"], eps=1e-6)
    return x, sd


def ref_pretrain_heads(sd, x, mask_index, heads):
    """cpredlayer/gpredlayer outputs at tokens mask_index + 2, per clip."""
    h, sd = ref_encode(sd, x, stride=tuple(sd["module.v.patch_embed.proj.weight"].shape[2:]), heads=heads,
                       mask_index=mask_index)

    def head(name, t):
        return F.linear(F.relu(F.linear(t, sd[f"{name}.0.weight"], sd[f"{name}.0.bias"])),
                        sd[f"{name}.2.weight"], sd[f"{name}.2.bias"])

    tok = torch.stack([h[i, mask_index[i] + 2] for i in range(h.shape[0])])
    return head("cpredlayer", tok), head("gpredlayer", tok)


def ref_finetune_logits(sd, x, stride, heads, task):
    h, sd = ref_encode(sd, x, stride=stride, heads=heads)
    pooled = h[:, 2:].mean(dim=1) if task == "ft_avgtok" else (h[:, 0] + h[:, 1]) / 2
    D = pooled.shape[-1]
    pooled = F.layer_norm(pooled, (D,), sd["mlp_head.0.weight"], sd["mlp_head.0.bias"])
    return F.linear(pooled, sd["mlp_head.1.weight"], sd["mlp_head.1.bias"])


# ---- tests ----------------------------------------------------------------------------------------------------------


def _sorted_mask_index(batch, n, m, seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.stack([torch.randperm(n, generator=g)[:m].sort().values for _ in range(batch)])


def _check_pretrain(sd, x, m, heads, expect):
    kind, cfg, state, num_classes = convert_authors_checkpoint(sd)
    assert kind == "pretrain" and num_classes == 0
    for key, value in expect.items():
        assert getattr(cfg, key) == value, key
    model = SSASTPretrainModel(cfg).eval()
    load_state_strict(model, state)
    n = model.encoder.num_patches
    idx = _sorted_mask_index(x.shape[0], n, m)
    mask = torch.zeros(x.shape[0], n, dtype=torch.bool).scatter_(1, idx, True)
    with torch.no_grad():
        out = model(x, mask=mask)
        ref_c, ref_g = ref_pretrain_heads(sd, x, idx, heads)
    torch.testing.assert_close(out.nce_pred, ref_c, atol=ATOL, rtol=0)
    torch.testing.assert_close(out.mse_pred, ref_g, atol=ATOL, rtol=0)


def test_patch_pretrained_matches_authors_heads():
    sd = authors_state(128, 2, 16, 16, 2 * 4, pretrain=True, p_input=(32, 64))
    x = torch.randn(3, 64, 32)
    _check_pretrain(sd, x, m=3, heads=2, expect=dict(dim=128, depth=2, heads=2, fshape=16, tshape=16,
                                                     input_fdim=32, input_tdim=64, num_prefix=2))


def test_frame_pretrained_matches_authors_heads_grid_from_pos_embed():
    # No p_input_*: the grid comes from the positional embedding and 128 mel bins.
    sd = authors_state(64, 2, 128, 2, 8, pretrain=True)
    x = torch.randn(2, 16, 128)
    _check_pretrain(sd, x, m=5, heads=1, expect=dict(dim=64, heads=1, fshape=128, tshape=2, input_fdim=128,
                                                     input_tdim=16, fstride=128, tstride=2))


@pytest.mark.parametrize("pooling,task", [("mean", "ft_avgtok"), ("cls", "ft_cls")])
def test_finetuned_matches_authors_logits(pooling, task):
    # 128 x 64 input, 16x16 stride 10: 12 x 5 = 60 tokens.
    sd = authors_state(128, 2, 16, 16, 60, pretrain=False, num_classes=5)
    kind, cfg, state, num_classes = convert_authors_checkpoint(sd, input_tdim=64, pooling=pooling)
    assert kind == "classifier" and num_classes == 5
    r = cfg
    assert (r.fstride, r.tstride, r.input_fdim, r.input_tdim, r.pooling) == (10, 10, 128, 64, pooling)
    model = SSASTClassifier(cfg, num_classes).eval()
    load_state_strict(model, state)
    x = torch.randn(3, 64, 128)
    with torch.no_grad():
        torch.testing.assert_close(model(x), ref_finetune_logits(sd, x, (10, 10), 2, task), atol=ATOL, rtol=0)


def test_stride_inference_for_released_geometries():
    # AST AudioSet: 16x16 stride 10 at 1024 frames -> 2 + 12 * 101 = 1214 positions (small width keeps it cheap).
    sd = authors_state(8, 1, 16, 16, 1212, pretrain=False)
    _, cfg, _, _ = convert_authors_checkpoint(sd)
    assert (cfg.fstride, cfg.tstride, cfg.input_tdim) == (10, 10, 1024)
    # ESC-50 patch model: 12 x 50 = 600 tokens at 512 frames, found without being told the length.
    _, cfg, _, _ = convert_authors_checkpoint(authors_state(8, 1, 16, 16, 600, pretrain=False))
    assert (cfg.fstride, cfg.tstride, cfg.input_tdim) == (10, 10, 512)
    # Frame model fine-tuned with time stride 1 at 128 frames: 127 tokens.
    _, cfg, _, _ = convert_authors_checkpoint(authors_state(8, 1, 128, 2, 127, pretrain=False), input_tdim=128)
    assert (cfg.fstride, cfg.tstride) == (128, 1)
    # Explicit strides are checked against the token count.
    with pytest.raises(WeightMismatchError, match="fstride"):
        convert_authors_checkpoint(sd, fstride=16, tstride=16)
    # Pretrained base-size: named size, 400 masked tokens of 512.
    sd = authors_state(8, 1, 16, 16, 512, pretrain=True, p_input=(128, 1024))
    _, cfg, _, _ = convert_authors_checkpoint(sd)
    assert cfg.size == "custom" and (cfg.dim, cfg.depth, cfg.heads) == (8, 1, 1) and cfg.mask_patch == 400


def test_import_file_round_trip_and_init(tmp_path):
    sd = authors_state(128, 2, 16, 16, 2 * 4, pretrain=True, p_input=(32, 64))
    f = tmp_path / "SSAST-Tiny-Patch-400.pth"
    torch.save(sd, f)
    meta = import_authors_checkpoint(f, tmp_path / "imported")
    assert meta.kind == "pretrain" and meta.imported_from == f.name
    model, _ = load_pretrained(tmp_path / "imported")
    x = torch.randn(2, 64, 32)
    idx = _sorted_mask_index(2, 8, 4)
    mask = torch.zeros(2, 8, dtype=torch.bool).scatter_(1, idx, True)
    with torch.no_grad():
        torch.testing.assert_close(model(x, mask=mask).nce_pred, ref_pretrain_heads(sd, x, idx, 2)[0],
                                   atol=ATOL, rtol=0)
    # Fine-tuning straight from the authors' file: encoder copied, positions adapted to the new stride.
    _, cfg, _, _ = convert_authors_checkpoint(sd)
    cfg.fstride = cfg.tstride = 10
    clf, info = build_classifier(cfg, 3, init=str(f))
    assert torch.equal(clf.encoder.patch_embed.proj.weight, sd["module.v.patch_embed.proj.weight"])
    assert "mask_embed" in info and "nce_head" in info


def test_unrecognisable_files_are_clear_errors(tmp_path):
    junk = tmp_path / "junk.pth"
    junk.write_text("hello")
    with pytest.raises(CheckpointError, match="junk.pth"):
        import_authors_checkpoint(junk, tmp_path / "out")
    other = tmp_path / "other.pth"
    torch.save({"weight": torch.zeros(2)}, other)
    with pytest.raises(CheckpointError, match="other.pth.*not an SSAST/AST checkpoint"):
        import_authors_checkpoint(other, tmp_path / "out")
    sd = authors_state(8, 1, 16, 16, 8, pretrain=True, p_input=(32, 64))
    sd["module.surprise"] = torch.zeros(1)
    bad = tmp_path / "bad.pth"
    torch.save(sd, bad)
    with pytest.raises(CheckpointError, match="surprise"):
        import_authors_checkpoint(bad, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_imported_checkpoint_carries_its_audio_length_and_statistics(tmp_path, capsys):
    """`import-checkpoint --input-tdim 256` then `predict`: the checkpoint says how long its input is and how it was
    normalised, so inference crops to 256 frames with those statistics instead of failing on 1024."""
    from conftest import make_wav

    from ssast.cli import main
    from ssast.config import DATASET_STATS

    # 16x16 stride 10 at 256 frames: 12 x 25 = 300 tokens; the length cannot be inferred from 300, so it is given
    src = tmp_path / "ast_esc50.pth"
    torch.save(authors_state(16, 1, 16, 16, 300, pretrain=False, num_classes=5), src)
    out = tmp_path / "converted"
    assert main(["import-checkpoint", str(src), str(out), "--input-tdim", "256", "--stats", "esc50",
                 "--fstride", "10", "--tstride", "10"]) == 0
    assert "normalisation mean -6.626808 std 5.358466" in capsys.readouterr().out
    meta = json.loads((out / "model.json").read_text())
    assert meta["audio"]["target_length"] == 256
    assert (meta["audio"]["norm_mean"], meta["audio"]["norm_std"]) == pytest.approx(DATASET_STATS["esc50"])
    wav = tmp_path / "clip.wav"
    make_wav(wav, 4.0)  # longer than 256 frames: cropped to the model's window
    assert main(["predict", str(out), str(wav), "--json"]) == 0
    top = json.loads(capsys.readouterr().out)[0]["top"]
    assert len(top) == 5 and abs(sum(t["score"] for t in top) - 1) < 1e-4

    # own statistics; one of the pair alone is refused in one line
    assert main(["import-checkpoint", str(src), str(tmp_path / "own"), "--input-tdim", "256", "--norm-mean", "-5",
                 "--norm-std", "3"]) == 0
    own = json.loads((tmp_path / "own" / "model.json").read_text())["audio"]
    assert (own["norm_mean"], own["norm_std"]) == (-5.0, 3.0)
    assert main(["import-checkpoint", str(src), str(tmp_path / "x"), "--norm-mean", "-5"]) == 2
    assert "--norm-mean and --norm-std go together" in capsys.readouterr().err
