"""The CPU attention backward (ssast.models.attention): same forward, gradients as accurate as eager bf16 attention."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from ssast.models import attention as attn_mod
from ssast.models.attention import Attention, qkv_attention, use_matmul_backward
from ssast.models.encoder import make_blocks


def attention(q, k, v):
    """(B, H, N, D) q, k, v through qkv_attention (which takes timm's (B, N, 3 * H * D) projection layout)."""
    b, h, n, d = q.shape
    qkv = torch.stack([t.transpose(1, 2) for t in (q, k, v)], dim=2).reshape(b, n, 3 * h * d)
    return qkv_attention(qkv, h).view(b, n, h, d).transpose(1, 2)


def _inputs(b: int, h: int, n: int, d: int, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    q, k, v = (1.5 * torch.randn(b, h, n, d, generator=gen) for _ in range(3))
    return q, k, v, torch.randn(b, h, n, d, generator=gen)


def _grads(fn, tensors, grad_out, dtype):
    xs = [t.to(dtype).requires_grad_() for t in tensors]
    out = fn(*xs)
    out.backward(grad_out.to(dtype))
    return out.detach(), [x.grad.double() for x in xs]


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).norm() / b.norm()).item()


@pytest.mark.parametrize("b,h,n,d,chunk", [(2, 3, 65, 16, 1 << 20), (1, 5, 114, 32, 2 * 114 * 114), (2, 2, 33, 64, 1)])
def test_bf16_gradients_match_float64_as_well_as_eager_attention(monkeypatch, b, h, n, d, chunk):
    # chunk sizes: all heads of a clip in one chunk; 2 heads a chunk with a shorter last one (5 heads); the minimum
    monkeypatch.setattr(attn_mod, "CHUNK_ELEMENTS", chunk)
    q, k, v, go = _inputs(b, h, n, d)
    _, ref = _grads(F.scaled_dot_product_attention, (q, k, v), go, torch.float64)

    def eager(q, k, v):  # what attention without a fused kernel computes under bf16 autocast
        return (q * d**-0.5 @ k.transpose(-2, -1)).softmax(-1) @ v

    _, ours = _grads(attention, (q, k, v), go, torch.bfloat16)
    _, flash = _grads(F.scaled_dot_product_attention, (q, k, v), go, torch.bfloat16)
    _, plain = _grads(eager, (q, k, v), go, torch.bfloat16)
    for i in range(3):
        err = _rel(ours[i], ref[i])
        assert err < 0.012, (i, err)
        assert err < 1.6 * _rel(plain[i], ref[i]) + 2e-3, (i, err)  # no worse than plain bf16 attention
        assert _rel(ours[i], flash[i]) < 0.015


def test_forward_is_pytorchs_and_the_path_is_chosen_only_where_it_applies(monkeypatch):
    qkv = torch.randn(2, 40, 3 * 64)
    qb = qkv.bfloat16().requires_grad_()
    assert use_matmul_backward(qb)
    out = qkv_attention(qb, 4)
    assert "MatmulBackward" in type(out.grad_fn).__name__
    with torch.no_grad():
        assert not use_matmul_backward(qb)
        assert torch.equal(out, qkv_attention(qb, 4))  # the same forward kernel on both paths
    assert not use_matmul_backward(qkv.requires_grad_())  # fp32: PyTorch's backward is as fast
    assert not use_matmul_backward(qb, dropout_p=0.1)
    assert not use_matmul_backward(qb.detach())
    monkeypatch.setenv("SSAST_ATTENTION_BACKWARD", "flash")  # the switch back to PyTorch's backward
    assert not use_matmul_backward(qb)
    assert "MatmulBackward" not in type(qkv_attention(qb, 4).grad_fn).__name__


def test_blocks_use_it_and_keep_timms_parameter_names():
    blocks = make_blocks(32, 2, 4)
    assert all(isinstance(blk.attn, Attention) for blk in blocks)
    keys = set(blocks.state_dict())
    assert {"0.attn.qkv.weight", "0.attn.qkv.bias", "0.attn.proj.weight", "1.norm1.weight"} <= keys
    x = torch.randn(2, 10, 32)
    ref = blocks[0].attn
    with torch.no_grad():
        plain = F.scaled_dot_product_attention(
            *ref.qkv(x).reshape(2, 10, 3, 4, 8).permute(2, 0, 3, 1, 4).unbind(0)
        ).transpose(1, 2).reshape(2, 10, 32)
        assert torch.allclose(ref(x), ref.proj(plain), atol=1e-6)


def test_a_bf16_training_step_of_a_block_matches_pytorchs_attention(monkeypatch):
    torch.manual_seed(0)
    blocks = make_blocks(64, 1, 4)
    x = torch.randn(2, 50, 64)
    grads = []
    for ours in (True, False):  # then PyTorch's own backward, through the same module
        monkeypatch.setattr(attn_mod, "use_matmul_backward", lambda q, p=0.0, on=ours: on)
        blocks.zero_grad()
        with torch.autocast("cpu", torch.bfloat16):
            y = blocks[0](x)
        y.float().pow(2).mean().backward()
        grads.append([p.grad.double().clone() for p in blocks.parameters()])
    for a, b in zip(*grads):
        assert _rel(a, b) < 0.02
