"""Tokenizer and encoder: token counts, frequency-major order, patchify round trip, shorter inputs."""
import pytest
import torch

from ssast.config import ModelConfig
from ssast.models.encoder import ViTEncoder, build_encoder
from ssast.models.tokenizer import InputShapeError, PatchEmbed, grid_shape, patchify, unpatchify


@pytest.mark.parametrize(
    "tdim, shape, stride, expected",
    [
        # non-overlapping patches (pretraining): 8 rows x T/16 columns
        (1024, (16, 16), (16, 16), (8, 64)),
        (512, (16, 16), (16, 16), (8, 32)),
        (128, (16, 16), (16, 16), (8, 8)),
        # overlapping patches (fine-tuning): 12 rows
        (1024, (16, 16), (10, 10), (12, 101)),
        (512, (16, 16), (10, 10), (12, 50)),
        (128, (16, 16), (10, 10), (12, 12)),
        # frames, pretraining and fine-tuning strides
        (1024, (128, 2), (128, 2), (1, 512)),
        (512, (128, 2), (128, 2), (1, 256)),
        (128, (128, 2), (128, 2), (1, 64)),
        (1024, (128, 2), (128, 1), (1, 1023)),
        (512, (128, 2), (128, 1), (1, 511)),
        (128, (128, 2), (128, 1), (1, 127)),
    ],
)
def test_grid_and_token_counts(tdim, shape, stride, expected):
    assert grid_shape(128, tdim, *shape, *stride) == expected
    embed = PatchEmbed(*shape, *stride, dim=8)
    tokens = embed(torch.zeros(1, tdim, 128))
    assert tokens.shape == (1, expected[0] * expected[1], 8)


def test_headline_counts():
    assert grid_shape(128, 1024, 16, 16, 10, 10)[0] * grid_shape(128, 1024, 16, 16, 10, 10)[1] == 1212
    assert grid_shape(128, 512, 16, 16, 10, 10) == (12, 50)


def test_input_smaller_than_patch_names_sizes():
    with pytest.raises(ValueError, match="8 frames"):
        grid_shape(128, 8, 16, 16, 16, 16)


@pytest.mark.parametrize("shape, stride", [((16, 16), (16, 16)), ((16, 16), (10, 10)), ((128, 2), (128, 1))])
def test_patch_embed_is_frequency_major(shape, stride):
    fshape, tshape = shape
    fstride, tstride = stride
    embed = PatchEmbed(fshape, tshape, fstride, tstride, dim=1)
    with torch.no_grad():
        embed.proj.weight.zero_()
        embed.proj.weight[0, 0, 0, 0] = 1.0  # the token reads its patch's top-left (lowest freq, first frame) cell
        embed.proj.bias.zero_()
    f_rows, t_cols = grid_shape(128, 96, fshape, tshape, fstride, tstride)
    for f_row, t_col in [(0, 1), (f_rows - 1, 2), (f_rows // 2, t_cols - 1)]:
        x = torch.zeros(1, 96, 128)  # (B, T, F)
        x[0, t_col * tstride, f_row * fstride] = 5.0
        out = embed(x)[0, :, 0]
        idx = f_row * t_cols + t_col
        assert out[idx] == 5.0
        assert torch.count_nonzero(out) == 1


def test_patchify_layout_and_round_trip():
    x = torch.randn(2, 70, 48)  # 70 frames: the last 6 do not fill a 16-frame patch
    p = patchify(x, 16, 16)
    assert p.shape == (2, 3 * 4, 256)
    # token (f_row=1, t_col=2) is x[:, 32:48, 16:32] flattened (freq, time)
    expected = x[0, 32:48, 16:32].transpose(0, 1).reshape(-1)
    assert torch.equal(p[0, 1 * 4 + 2], expected)
    back = unpatchify(p, 16, 16, 48, 70)
    assert torch.equal(back[:, :64], x[:, :64])
    assert torch.count_nonzero(back[:, 64:]) == 0
    # exact inverse on whole-patch inputs, frames too
    y = torch.randn(3, 64, 128)
    assert torch.equal(unpatchify(patchify(y, 128, 2), 128, 2, 128, 64), y)
    assert torch.equal(patchify(unpatchify(p, 16, 16, 48, 70), 16, 16), p)


def test_patchify_matches_unfold_targets():
    x = torch.randn(2, 64, 32)
    unfold = torch.nn.functional.unfold(x.transpose(1, 2).unsqueeze(1), (16, 16), stride=(16, 16))
    assert torch.equal(patchify(x, 16, 16), unfold.transpose(1, 2))


def test_unpatchify_rejects_wrong_grid():
    with pytest.raises(InputShapeError):
        unpatchify(torch.zeros(1, 5, 256), 16, 16, 32, 64)


def tiny_encoder(**kw):
    args = dict(dim=32, depth=2, heads=4, fshape=16, tshape=16, fstride=16, tstride=16, input_fdim=32, input_tdim=96)
    args.update(kw)
    return ViTEncoder(**args)


def test_encoder_shapes_names_and_init():
    enc = tiny_encoder(num_prefix=2, drop_path=0.2)
    assert enc.grid == (2, 6) and enc.num_patches == 12 and enc.num_prefix == 2
    assert enc.prefix_tokens.shape == (1, 2, 32) and enc.pos_embed.shape == (1, 14, 32)
    assert enc.patch_embed.proj.kernel_size == (16, 16)
    assert enc(torch.randn(3, 96, 32)).shape == (3, 14, 32)
    assert abs(enc.pos_embed.std().item() - 0.02) < 0.008
    assert torch.count_nonzero(enc.blocks[0].attn.qkv.bias) == 0 and enc.blocks[0].norm1.eps == 1e-6
    assert enc.blocks[0].drop_path1.__class__.__name__ == "Identity"  # first block: rate 0
    assert enc.blocks[1].drop_path1.drop_prob == pytest.approx(0.2)


def test_build_encoder_sizes():
    enc = build_encoder(ModelConfig(size="tiny", input_tdim=128))
    assert (enc.dim, enc.depth, len(enc.blocks), enc.blocks[0].attn.num_heads) == (192, 12, 12, 3)
    assert enc.num_patches == 64


def test_shorter_input_uses_first_time_columns():
    torch.manual_seed(0)
    enc = tiny_encoder(num_prefix=1).eval()
    x = torch.randn(2, 96, 32)
    short = x[:, :48]  # 3 of 6 time columns
    tokens = enc.embed_patches(short)
    got = enc.add_positions(tokens)  # grid inferred: 2 rows x 3 columns
    pos = enc.pos_embed[0, 1:].reshape(2, 6, 32)[:, :3].reshape(6, 32)
    assert torch.allclose(got[:, 1:], tokens + pos)
    assert torch.allclose(got[:, 0], enc.prefix_tokens[0, 0] + enc.pos_embed[0, 0])
    assert enc(short).shape == (2, 7, 32)
    # the short clip's patches see the same positions as the matching patches of the full clip
    full_in = enc.add_positions(enc.embed_patches(x))[:, 1:].reshape(2, 2, 6, 32)[:, :, :3].reshape(2, 6, 32)
    assert torch.allclose(full_in, got[:, 1:])


def test_encoder_rejects_wrong_inputs():
    enc = tiny_encoder()
    with pytest.raises(InputShapeError, match="mel bins"):
        enc(torch.randn(1, 96, 40))
    with pytest.raises(InputShapeError, match="frames"):
        enc(torch.randn(1, 128, 32))


def test_grad_checkpointing_same_result():
    torch.manual_seed(0)
    a = tiny_encoder().train()
    b = tiny_encoder(grad_checkpointing=True).train()
    b.load_state_dict(a.state_dict())
    x = torch.randn(2, 96, 32)
    ya, yb = a(x), b(x)
    assert torch.allclose(ya, yb, atol=1e-6)
    ya.square().sum().backward()
    yb.square().sum().backward()
    assert torch.allclose(a.blocks[0].attn.qkv.weight.grad, b.blocks[0].attn.qkv.weight.grad, atol=1e-5)


@pytest.mark.parametrize("shape", [(16, 16, 16, 16), (16, 16, 10, 10), (128, 2, 128, 2), (128, 2, 128, 1)])
def test_patch_embed_equals_the_convolution(shape):
    """The matrix-product projection computes what a conv with kernel = patch and stride = stride computes."""
    torch.manual_seed(0)
    pe = PatchEmbed(*shape, dim=24)
    x = torch.randn(2, 100, 128)
    ref = pe.proj(x.transpose(1, 2).unsqueeze(1)).flatten(2).transpose(1, 2)
    torch.testing.assert_close(pe(x), ref, rtol=1e-5, atol=1e-5)
