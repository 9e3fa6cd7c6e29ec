"""Objectives and the pretraining model: InfoNCE vs a per-clip loop, masks respected, visible-token path, training."""
import math

import pytest
import torch
import torch.nn.functional as F

from ssast.config import ModelConfig
from ssast.models.objectives import info_nce, masked_mse
from ssast.models.pretrain import PretrainOutput, SSASTPretrainModel, build_pretrain_model
from ssast.models.tokenizer import InputShapeError, patchify


def tiny_cfg(**kw) -> ModelConfig:
    """2 x 8 grid of 16x16 patches (32 mel bins x 128 frames), 6 masked tokens."""
    args = dict(size="custom", dim=64, depth=2, heads=4, input_fdim=32, input_tdim=128, mask_patch=6,
                cluster_sizes=[2, 3])
    args.update(kw)
    return ModelConfig(**args)


def frame_cfg(**kw) -> ModelConfig:
    """32 x 2 frames over 64 frames: 32 tokens, a quarter masked."""
    return tiny_cfg(fshape=32, tshape=2, input_tdim=64, mask_patch=0.25, **kw)


def gen(seed):
    return torch.Generator().manual_seed(seed)


def spectrograms(batch=4, frames=128, bins=32, seed=0):
    """Smooth, structured synthetic filter banks (sums of random 2-D sinusoids), normalised."""
    g = gen(seed)
    t = torch.arange(frames).float()[None, :, None]
    f = torch.arange(bins).float()[None, None, :]
    x = torch.zeros(batch, frames, bins)
    for _ in range(3):
        a, b, c = (torch.rand(3, batch, 1, 1, generator=g) * torch.tensor([0.3, 0.3, 6.28]).view(3, 1, 1, 1))
        x = x + torch.sin(a * t + b * f + c)
    return (x - x.mean()) / x.std()


def stationary_spectrograms(batch=8, frames=128, bins=32, seed=0):
    """A random smooth spectral profile per clip, constant over time (plus a shared ripple): masked patches are
    predictable from the visible patches of the same frequency row, so a model can learn it in a few steps."""
    prof = F.avg_pool1d(torch.randn(batch, 1, bins, generator=gen(seed)), 5, 1, 2)
    x = prof.expand(batch, frames, bins) + 0.3 * torch.sin(0.4 * torch.arange(frames).float())[None, :, None]
    return (x - x.mean()) / x.std()


# ---------------------------------------------------------------------------------------------------------------
# objectives


def loop_info_nce(pred, target, axis):
    """The straightforward per-clip definition (the authors' per-sample loop)."""
    losses, hits = [], []
    for b in range(pred.shape[0]):
        logits = torch.mm(target[b], pred[b].t())
        log_p = F.log_softmax(logits, dim=-1 if axis == "authors" else 0)
        losses.append(-torch.diag(log_p).mean())
        m = logits.shape[0]
        hits.append((F.softmax(logits, dim=-1).argmax(dim=0) == torch.arange(m)).float().mean())
    return torch.stack(losses).mean(), torch.stack(hits).mean()


@pytest.mark.parametrize("axis", ["authors", "paper"])
def test_info_nce_equals_per_clip_loop(axis):
    g = gen(0)
    pred, target = torch.randn(5, 7, 12, generator=g), torch.randn(5, 7, 12, generator=g)
    pred[0] = target[0] + 0.01 * pred[0]  # one clip predicted well: accuracy is not trivially 0
    loss, acc = info_nce(pred, target, axis)
    ref_loss, ref_acc = loop_info_nce(pred, target, axis)
    assert torch.allclose(loss, ref_loss, atol=1e-6) and torch.allclose(acc, ref_acc)
    assert 0 < acc.item() < 1 and loss.dim() == 0


def test_info_nce_axes_differ_and_fp32():
    g = gen(1)
    pred, target = torch.randn(2, 6, 8, generator=g), torch.randn(2, 6, 8, generator=g)
    assert not torch.allclose(info_nce(pred, target, "authors")[0], info_nce(pred, target, "paper")[0])
    loss, acc = info_nce(pred.bfloat16(), target.bfloat16())
    assert loss.dtype == torch.float32 and acc.dtype == torch.float32
    with pytest.raises(ValueError):
        info_nce(pred, target, "columns")


def test_masked_mse():
    a, b = torch.randn(2, 3, 4), torch.randn(2, 3, 4)
    assert torch.allclose(masked_mse(a.bfloat16(), b), ((a.bfloat16().float() - b) ** 2).mean())
    assert masked_mse(a, b).dtype == torch.float32


# ---------------------------------------------------------------------------------------------------------------
# the model


@pytest.mark.parametrize("mode", ["all", "visible"])
@pytest.mark.parametrize("make", [tiny_cfg, frame_cfg])
def test_output_shapes(mode, make):
    cfg = make(pretrain_encoder=mode)
    model = build_pretrain_model(cfg)
    n, m = model.encoder.num_patches, model.num_mask
    x = spectrograms(3, cfg.input_tdim)
    out = model(x, generator=gen(0))
    assert isinstance(out, PretrainOutput)
    assert out.mask.shape == (3, n) and (out.mask.sum(1) == m).all()
    assert out.nce_pred.shape == out.mse_pred.shape == (3, m, cfg.fshape * cfg.tshape)
    for v in (out.loss, out.nce, out.mse, out.accuracy):
        assert v.dim() == 0 and torch.isfinite(v)
    assert torch.allclose(out.loss, out.nce + 10 * out.mse)
    assert set(out.scalars()) == {"loss", "nce", "mse", "accuracy"}
    assert model.mask_mode == ("random" if make is frame_cfg else "cluster")
    assert hasattr(model, "decoder") == (mode == "visible")
    assert hasattr(model, "mask_embed") == (mode == "all")


@pytest.mark.parametrize("mode", ["all", "visible"])
def test_explicit_mask_is_respected(mode):
    torch.manual_seed(0)
    model = build_pretrain_model(tiny_cfg(pretrain_encoder=mode)).eval()
    x = spectrograms(2)
    mask = torch.zeros(2, 16, dtype=torch.bool)
    mask[:, [1, 5, 9, 10, 14, 15]] = True
    out = model(x, mask=mask)
    assert torch.equal(out.mask, mask)
    # predictions are in increasing token order: they must line up with the targets at those positions
    targets = patchify(x, 16, 16)[:, [1, 5, 9, 10, 14, 15]]
    assert torch.allclose(out.mse, F.mse_loss(out.mse_pred, targets))

    # the content of a masked patch (token 9 = row 1, column 1) is never seen: predictions unchanged, targets change
    y = x.clone()
    y[:, 16:32, 16:32] += 3.0
    out_y = model(y, mask=mask)
    assert torch.equal(out_y.mse_pred, out.mse_pred) and torch.equal(out_y.nce_pred, out.nce_pred)
    assert not torch.allclose(out_y.loss, out.loss)
    # an unmasked patch (token 2 = row 0, column 2) is context: predictions change
    z = x.clone()
    z[:, 32:48, 0:16] += 3.0
    out_z = model(z, mask=mask)
    assert not torch.allclose(out_z.mse_pred, out.mse_pred) and not torch.allclose(out_z.loss, out.loss)


def test_explicit_mask_errors():
    model = build_pretrain_model(tiny_cfg())
    x = spectrograms(2)
    bad = torch.zeros(2, 16, dtype=torch.bool)
    bad[0, :3] = True
    bad[1, :4] = True
    with pytest.raises(InputShapeError, match="same"):
        model(x, mask=bad)
    with pytest.raises(InputShapeError, match="shape"):
        model(x, mask=torch.zeros(2, 15, dtype=torch.bool))


def count_encoder_passes(model):
    calls = []
    model.encoder.blocks[0].register_forward_hook(lambda mod, inp, out: calls.append(inp[0].shape))
    return calls


def test_two_pass_uses_two_masks_and_matches_one_pass_on_a_fixed_mask():
    torch.manual_seed(0)
    one = build_pretrain_model(tiny_cfg()).eval()
    two = build_pretrain_model(tiny_cfg(two_pass=True)).eval()
    two.load_state_dict(one.state_dict())
    x = spectrograms(3)
    calls = count_encoder_passes(two)
    out = two(x, generator=gen(0))
    assert len(calls) == 2
    assert out.mse_mask is not None and not torch.equal(out.mse_mask, out.mask)
    assert (out.mse_mask.sum(1) == 6).all()
    mask = one.sample_mask(3, generator=gen(4))
    a, b = one(x, mask=mask), two(x, mask=mask)
    assert torch.equal(b.mse_mask, mask)
    assert torch.allclose(a.loss, b.loss, atol=1e-6) and torch.allclose(a.accuracy, b.accuracy)
    calls_one = count_encoder_passes(one)
    one(x, generator=gen(0))
    assert len(calls_one) == 1


@pytest.mark.parametrize("mode", ["all", "visible"])
@pytest.mark.parametrize("make", [tiny_cfg, frame_cfg])
def test_k_masks_per_clip_equal_the_clips_repeated_with_those_masks(mode, make):
    k, batch = 3, 2
    torch.manual_seed(0)
    many = build_pretrain_model(make(pretrain_encoder=mode, masks_per_clip=k))
    one = build_pretrain_model(make(pretrain_encoder=mode))
    one.load_state_dict(many.state_dict())
    x = spectrograms(batch, many.cfg.input_tdim)
    calls = count_encoder_passes(many)
    out = many(x, generator=gen(0))
    n, m, p = many.encoder.num_patches, many.num_mask, many.encoder.num_prefix
    # one encoder pass over the K x B masked copies (only the visible tokens on the visible path)
    assert calls == [torch.Size([k * batch, p + (n - m if mode == "visible" else n), 64])]
    assert out.mask.shape == (k * batch, n) and (out.mask.sum(1) == m).all()
    for i in range(batch):  # the K masks of a clip are drawn independently (on 16 tokens two may coincide)
        assert len({tuple(c.tolist()) for c in out.mask[i * k:(i + 1) * k]}) > 1
    ref = one(x.repeat_interleave(k, dim=0), mask=out.mask)
    for name in ("loss", "nce", "mse", "accuracy"):
        assert torch.allclose(getattr(out, name), getattr(ref, name), atol=1e-6), name
    out.loss.backward()
    ref.loss.backward()
    grads = dict(one.named_parameters())
    for name, param in many.named_parameters():
        assert param.grad is not None and torch.allclose(param.grad, grads[name].grad, atol=1e-6), name
    # and not the same as one mask per clip: the loss of the plain batch is another number
    assert not torch.allclose(one(x, generator=gen(0)).loss, out.loss)


@pytest.mark.parametrize("make", [tiny_cfg, frame_cfg])
def test_inverse_block_mode_keeps_blocks_of_block_sizes(make):
    from ssast.models.masking import inverse_block_mask

    model = build_pretrain_model(make(mask_mode="inverse_block", block_sizes=[4]))
    f_rows, t_cols = model.encoder.grid
    out = model(spectrograms(5, model.cfg.input_tdim), generator=gen(3))
    assert torch.equal(out.mask, inverse_block_mask(5, f_rows, t_cols, model.num_mask, (4,), generator=gen(3)))
    assert not torch.equal(out.mask, model.sample_mask(5, generator=gen(4)))


@pytest.mark.parametrize("weights, used", [((1.0, 0.0), "nce"), ((0.0, 10.0), "mse")])
def test_zero_weight_skips_head(weights, used):
    model = build_pretrain_model(tiny_cfg(nce_weight=weights[0], mse_weight=weights[1]))
    calls = {"nce": 0, "mse": 0}
    model.nce_head.register_forward_hook(lambda *a: calls.__setitem__("nce", calls["nce"] + 1))
    model.mse_head.register_forward_hook(lambda *a: calls.__setitem__("mse", calls["mse"] + 1))
    out = model(spectrograms(2), generator=gen(0))
    assert calls == {"nce": int(used == "nce"), "mse": int(used == "mse")}
    skipped = "mse" if used == "nce" else "nce"
    assert getattr(out, f"{skipped}_pred") is None and getattr(out, skipped) == 0
    assert torch.allclose(out.loss, weights[0] * out.nce + weights[1] * out.mse) and out.loss > 0


@pytest.mark.parametrize("make", [tiny_cfg, frame_cfg])
def test_encoder_sees_visible_tokens_only(make):
    for mode in ("all", "visible"):
        model = build_pretrain_model(make(pretrain_encoder=mode, num_prefix=1 if make is frame_cfg else 2))
        calls = count_encoder_passes(model)
        model(spectrograms(3, model.cfg.input_tdim), generator=gen(0))
        p, n, m = model.encoder.num_prefix, model.encoder.num_patches, model.num_mask
        assert calls == [torch.Size([3, p + (n - m if mode == "visible" else n), 64])]
        if mode == "visible":
            dec_calls = []
            model.decoder.blocks[0].register_forward_hook(lambda mod, inp, out: dec_calls.append(inp[0].shape))
            model(spectrograms(3, model.cfg.input_tdim), generator=gen(0))
            assert dec_calls == [torch.Size([3, p + n, model.decoder.dim])]


@pytest.mark.parametrize("mode", ["all", "visible"])
def test_gradients_reach_every_part(mode):
    model = build_pretrain_model(tiny_cfg(pretrain_encoder=mode, decoder_dim=32, decoder_heads=2))
    model(spectrograms(2), generator=gen(0)).loss.backward()
    names = ["encoder.patch_embed.proj.weight", "encoder.pos_embed", "encoder.prefix_tokens",
             "encoder.blocks.0.attn.qkv.weight", "encoder.blocks.1.mlp.fc2.weight", "encoder.norm.weight",
             "nce_head.0.weight", "nce_head.2.weight", "mse_head.0.weight", "mse_head.2.weight"]
    if mode == "visible":
        names += ["decoder.embed.weight", "decoder.mask_token", "decoder.pos_embed", "decoder.blocks.1.attn.qkv.weight",
                  "decoder.norm.weight"]
        assert model.nce_head[0].in_features == 32
    else:
        names += ["mask_embed"]
    params = dict(model.named_parameters())
    for name in names:
        grad = params[name].grad
        assert grad is not None and grad.abs().sum() > 0, name
    # every parameter is used (no unused parameters to trip up DDP)
    assert all(p.grad is not None for p in model.parameters())


@pytest.mark.parametrize("mode", ["all", "visible"])
def test_joint_loss_falls_on_a_fixed_batch(mode):
    torch.manual_seed(0)
    model = build_pretrain_model(tiny_cfg(pretrain_encoder=mode, mask_patch=5))
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    x = stationary_spectrograms(8, seed=1)
    g = gen(0)  # a new mask every step
    losses, accs = [], []
    for _ in range(40):
        out = model(x, generator=g)
        opt.zero_grad()
        out.loss.backward()
        opt.step()
        losses.append(out.loss.item())
        accs.append(out.accuracy.item())
    first, last = sum(losses[:3]) / 3, sum(losses[-3:]) / 3
    assert all(math.isfinite(v) for v in losses)
    assert last < 0.6 * first, (first, last)
    assert sum(accs[-5:]) / 5 > sum(accs[:5]) / 5


@pytest.mark.parametrize("cfg", [tiny_cfg(), tiny_cfg(pretrain_encoder="visible"), tiny_cfg(two_pass=True),
                                 frame_cfg()])
def test_no_host_sync_in_forward_and_backward(cfg, monkeypatch):
    model = build_pretrain_model(cfg)
    x = spectrograms(2, cfg.input_tdim)
    g = gen(0)

    def forbidden(*args, **kwargs):
        raise AssertionError("host synchronisation in the training step")

    for name in ("item", "cpu", "tolist", "numpy", "nonzero", "__bool__", "__int__", "__float__"):
        monkeypatch.setattr(torch.Tensor, name, forbidden)
    out = model(x, generator=g)
    out.loss.backward()
    monkeypatch.undo()
    assert torch.isfinite(out.loss)


def test_reconstruct_keeps_visible_input_and_places_predictions():
    torch.manual_seed(0)
    model = build_pretrain_model(tiny_cfg()).train()
    x = spectrograms(2, 120)  # 120 frames: 7 whole patch columns, an 8-frame tail that is kept as is
    mask, recon = model.reconstruct(x, generator=gen(0))
    assert model.training and recon.shape == x.shape and mask.shape == (2, 14)
    px, pr = patchify(x, 16, 16), patchify(recon, 16, 16)
    assert torch.equal(pr[~mask], px[~mask])
    assert torch.equal(recon[:, 112:], x[:, 112:])
    model.eval()
    with torch.no_grad():
        out = model(x, mask=mask)
    assert torch.allclose(pr[mask].view(2, -1, 256), out.mse_pred, atol=1e-6)


def test_shorter_input_and_bf16_autocast():
    model = build_pretrain_model(tiny_cfg(mask_patch=0.4, pretrain_encoder="visible"))
    out = model(spectrograms(2, 64), generator=gen(0))  # 2 x 4 grid
    assert out.mask.shape == (2, 8) and (out.mask.sum(1) == 3).all()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(spectrograms(2), generator=gen(0))
    assert out.loss.dtype == torch.float32 and torch.isfinite(out.loss)
    out.loss.backward()
    assert model.encoder.pos_embed.grad.dtype == torch.float32


def test_config_errors():
    with pytest.raises(ValueError, match="non-overlapping"):
        SSASTPretrainModel(tiny_cfg(fstride=10, tstride=10))
    with pytest.raises(ValueError, match="mask_patch"):
        SSASTPretrainModel(tiny_cfg(mask_patch=17))
    with pytest.raises(ValueError, match="decoder_heads"):
        SSASTPretrainModel(tiny_cfg(pretrain_encoder="visible", decoder_dim=48, decoder_heads=5))
