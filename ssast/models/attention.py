"""Self-attention whose backward on the CPU runs as matrix products instead of PyTorch's CPU flash-attention backward.

Profiled on a 2-core AMX Xeon (Base, 512 tokens, batch 2, bf16), ``aten::_scaled_dot_product_flash_attention_for_cpu
_backward`` took 25 ms per layer, about 150 GFLOP/s against a 1.5 TFLOP/s bf16 matmul peak: over a quarter of a
pretraining step. Its forward is fast, so the forward stays PyTorch's CPU flash kernel (which also returns the row
log-sum-exp), and the backward recomputes the probabilities a few heads at a time, small enough to stay in cache:

    P = exp(Q K^T s - lse)    dV = P^T dO    dS = P * (dO V^T - rowsum(dO * O))    dQ = dS K s    dK = dS^T Q s

Every N x N product is one ``baddbmm`` / ``bmm`` (the subtraction rides in as its ``input``) and the only N x N
elementwise passes are ``exp_`` and ``mul_``, in the autocast dtype. bf16 rounds lse and the row sums to 8 bits, which
would scale whole rows of P and dS by up to 3%; the dropped part is a per-row factor ``r = exp(bf16(lse) - lse)``,
applied to the (N, D) operands instead, so the N x N work stays bf16 and the rows stay exact. The gradients match
float64 attention to about 0.6% relative in bf16, between the flash backward's 0.3% and eager attention under
autocast's 0.8% (tests/test_attention.py); 2x to 4x faster than the flash backward at 114 to 1214 tokens.

Anywhere else (GPU, no gradient, export, masks, dropout) attention is ``F.scaled_dot_product_attention``.
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from timm.layers import Attention as TimmAttention
from torch import Tensor

__all__ = ["Attention", "attention", "use_matmul_backward"]

CHUNK_ELEMENTS = 1 << 20  # N x N scores per chunk: about 2 MB in bf16, one core's L2
_DTYPES = (torch.bfloat16,)  # in fp32 the flash backward is as fast


def use_matmul_backward(q: Tensor, dropout_p: float = 0.0) -> bool:
    """Whether attention of ``q`` (B, H, N, D) takes the matrix-product backward: CPU, gradients wanted, no dropout,
    bf16 or fp32, and not inside an export trace (which should see the one standard op)."""
    return (
        q.device.type == "cpu"
        and q.dtype in _DTYPES
        and dropout_p == 0.0
        and torch.is_grad_enabled()
        and q.requires_grad
        and not torch.compiler.is_exporting()
    )


class _MatmulBackwardAttention(torch.autograd.Function):
    """Softmax attention (no mask, no dropout): forward by the CPU flash kernel, backward by chunked products."""

    @staticmethod
    def forward(ctx, q: Tensor, k: Tensor, v: Tensor, scale: float) -> Tensor:
        out, lse = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu(q, k, v, scale=scale)[:2]
        ctx.save_for_backward(q, k, v, out, lse)
        ctx.scale = scale
        return out

    @staticmethod
    def backward(ctx, grad_out: Tensor):
        q, k, v, out, lse = ctx.saved_tensors
        return (*attention_backward(q, k, v, out, lse, grad_out, ctx.scale), None)


def attention_backward(
    q: Tensor, k: Tensor, v: Tensor, out: Tensor, lse: Tensor, grad_out: Tensor, scale: float
) -> tuple[Tensor, Tensor, Tensor]:
    """(dq, dk, dv) of softmax(q k^T scale) v, from the forward's output and row log-sum-exp (B, H, N) in float32."""
    b, h, n, d = q.shape
    dtype = q.dtype
    qs, kf, vf = (q * scale).reshape(b * h, n, d), k.reshape(b * h, n, d), v.reshape(b * h, n, d)
    ks = kf * scale
    lse = lse.reshape(b * h, n, 1).float()
    lse_hi = lse.to(dtype)
    row = torch.exp(lse_hi.float() - lse)  # what rounding lse dropped, per row
    go32 = grad_out.reshape(b * h, n, d).float()
    neg_delta = (go32 * out.reshape(b * h, n, d).float()).sum(-1, keepdim=True).mul_(row).neg_().to(dtype)
    go = (go32 * row).to(dtype)
    neg_lse = lse_hi.neg()
    dq, dk, dv = (torch.empty(b * h, n, d, dtype=dtype) for _ in range(3))
    step = max(2, CHUNK_ELEMENTS // (n * n))
    for s in range(0, b * h, step):
        e = min(s + step, b * h)
        p = torch.baddbmm(neg_lse[s:e], qs[s:e], kf[s:e].transpose(1, 2)).exp_()  # P / row
        torch.bmm(p.transpose(1, 2), go[s:e], out=dv[s:e])
        ds = torch.baddbmm(neg_delta[s:e], go[s:e], vf[s:e].transpose(1, 2)).mul_(p)  # dS itself
        torch.bmm(ds, ks[s:e], out=dq[s:e])
        torch.bmm(ds.transpose(1, 2), qs[s:e], out=dk[s:e])
    return dq.view(b, h, n, d), dk.view(b, h, n, d), dv.view(b, h, n, d)


def attention(q: Tensor, k: Tensor, v: Tensor, dropout_p: float = 0.0, scale: Optional[float] = None) -> Tensor:
    """softmax(q k^T scale) v for (B, H, N, D) inputs, scale 1/sqrt(D) by default; the fast CPU backward when it
    applies (:func:`use_matmul_backward`), ``F.scaled_dot_product_attention`` otherwise."""
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    if use_matmul_backward(q, dropout_p) and k.dtype == q.dtype and v.dtype == q.dtype:
        return _MatmulBackwardAttention.apply(q, k, v, scale)
    return F.scaled_dot_product_attention(q, k, v, dropout_p=dropout_p, scale=scale)


class Attention(TimmAttention):
    """timm's multi-head attention (same parameters and state dict) with :func:`attention` in place of SDPA."""

    def forward(self, x: Tensor, attn_mask: Optional[Tensor] = None, is_causal: bool = False) -> Tensor:
        if attn_mask is not None or is_causal or not self.fused_attn:
            return super().forward(x, attn_mask=attn_mask, is_causal=is_causal)
        b, n, _ = x.shape
        gate = self.gate(x).sigmoid() if self.gate is not None else None
        q, k, v = self.qkv(x).reshape(b, n, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4).unbind(0)
        q, k = self.q_norm(q), self.k_norm(k)
        x = attention(q, k, v, self.attn_drop.p if self.training else 0.0, self.scale)
        x = self.norm(x.transpose(1, 2).reshape(b, n, self.attn_dim))
        if gate is not None:
            x = x * gate
        return self.proj_drop(self.proj(x))
