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
float64 attention to 0.4-0.9% relative in bf16, like eager attention under autocast (0.7-1%; the flash backward
0.3-0.7%; tests/test_attention.py). The backward alone is 1.5x (1214 tokens) to 4x (114 tokens) faster than the flash
backward; a whole Base step 3-17% (benchmarks/README.md).

Anywhere else (GPU, no gradient, export, masks, dropout) attention is ``F.scaled_dot_product_attention``; so it is
everywhere with ``SSAST_ATTENTION_BACKWARD=flash`` in the environment (to compare, or to rule this path out).
"""
from __future__ import annotations

import os
from typing import Optional

import torch
import torch.nn.functional as F
from timm.layers import Attention as TimmAttention
from torch import Tensor, nn

__all__ = ["Attention", "qkv_attention", "use_matmul_backward"]

CHUNK_ELEMENTS = 1 << 20  # N x N scores per chunk: about 2 MB in bf16, one core's L2
_DTYPES = (torch.bfloat16,)  # in fp32 the flash backward is as fast


def use_matmul_backward(qkv: Tensor, dropout_p: float = 0.0) -> bool:
    """Whether attention of a qkv projection takes the matrix-product backward: CPU, gradients wanted, no dropout,
    bf16, and not inside an export trace (which should see the one standard op)."""
    return (
        os.environ.get("SSAST_ATTENTION_BACKWARD", "matmul") != "flash"
        and qkv.device.type == "cpu"
        and qkv.dtype in _DTYPES
        and dropout_p == 0.0
        and torch.is_grad_enabled()
        and qkv.requires_grad
        and not torch.compiler.is_exporting()
    )


def split_heads(qkv: Tensor, heads: int) -> tuple[Tensor, Tensor, Tensor]:
    """(B, N, 3 * H * D) projections -> q, k, v as (B, H, N, D) views (timm's qkv layout)."""
    b, n, c3 = qkv.shape
    return qkv.view(b, n, 3, heads, c3 // (3 * heads)).permute(2, 0, 3, 1, 4).unbind(0)


class _MatmulBackwardAttention(torch.autograd.Function):
    """Softmax attention of a qkv projection (no mask, no dropout): forward by the CPU flash kernel, backward by
    chunked products (:func:`qkv_attention_backward`) into the projection's gradient."""

    @staticmethod
    def forward(ctx, qkv: Tensor, heads: int, scale: float) -> Tensor:
        q, k, v = split_heads(qkv, heads)
        out, lse = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu(q, k, v, scale=scale)[:2]
        ctx.save_for_backward(qkv, out, lse)
        ctx.heads, ctx.scale = heads, scale
        b, h, n, d = out.shape
        return out.transpose(1, 2).reshape(b, n, h * d)  # the kernel's output is (B, N, H, D) in memory: a view

    @staticmethod
    def backward(ctx, grad_out: Tensor):
        qkv, out, lse = ctx.saved_tensors
        return qkv_attention_backward(qkv, out, lse, grad_out, ctx.heads, ctx.scale), None, None


def qkv_attention_backward(
    qkv: Tensor, out: Tensor, lse: Tensor, grad_out: Tensor, heads: int, scale: float
) -> Tensor:
    """The gradient (B, N, 3C) of softmax(q k^T scale) v with respect to the qkv projection, from the forward's
    output (B, H, N, D), its row log-sum-exp (B, H, N) in float32 and the output gradient (B, N, C)."""
    b, n, c3 = qkv.shape
    d = c3 // (3 * heads)
    dtype = qkv.dtype
    q, k, v = (t.contiguous() for t in split_heads(qkv, heads))  # products run faster on dense heads
    lse = lse.float()
    lse_hi = lse.to(dtype)
    row = torch.exp(lse_hi.float() - lse).unsqueeze(-1)  # what rounding lse dropped, per row: (B, H, N, 1)
    go32 = grad_out.view(b, n, heads, d).transpose(1, 2).float()
    neg_delta = (go32 * out.float()).sum(-1, keepdim=True).mul_(row).neg_().to(dtype)
    go = (go32 * row).to(dtype, memory_format=torch.contiguous_format)
    neg_lse = lse_hi.neg().unsqueeze(-1)
    bh = b * heads
    q, k, v, go = (t.view(bh, n, d) for t in (q, k, v, go))
    neg_lse, neg_delta = neg_lse.reshape(bh, n, 1), neg_delta.reshape(bh, n, 1)
    dq, dk, dv = (torch.empty(bh, n, d, dtype=dtype) for _ in range(3))
    step = max(2, CHUNK_ELEMENTS // (n * n))
    for s in range(0, bh, step):
        e = min(s + step, bh)
        p = torch.baddbmm(neg_lse[s:e], q[s:e], k[s:e].transpose(1, 2), alpha=scale).exp_()  # P / row
        torch.bmm(p.transpose(1, 2), go[s:e], out=dv[s:e])
        ds = torch.baddbmm(neg_delta[s:e], go[s:e], v[s:e].transpose(1, 2)).mul_(p)  # dS itself
        torch.bmm(ds, k[s:e], out=dq[s:e])
        torch.bmm(ds.transpose(1, 2), q[s:e], out=dk[s:e])
    grad = torch.empty(b, n, 3, heads, d, dtype=dtype)
    for j, part in enumerate((dq.mul_(scale), dk.mul_(scale), dv)):  # one pass each into timm's layout
        grad[:, :, j] = part.view(b, heads, n, d).transpose(1, 2)
    return grad.view(b, n, c3)


def qkv_attention(qkv: Tensor, heads: int, dropout_p: float = 0.0, scale: Optional[float] = None) -> Tensor:
    """Multi-head softmax attention of a (B, N, 3 * H * D) qkv projection (timm's layout) -> (B, N, H * D);
    scale 1/sqrt(D) by default. The fast CPU backward where it applies (:func:`use_matmul_backward`),
    ``F.scaled_dot_product_attention`` otherwise."""
    b, n, c3 = qkv.shape
    scale = (c3 // (3 * heads)) ** -0.5 if scale is None else scale
    if use_matmul_backward(qkv, dropout_p):
        return _MatmulBackwardAttention.apply(qkv, heads, scale)
    q, k, v = split_heads(qkv, heads)
    out = F.scaled_dot_product_attention(q, k, v, dropout_p=dropout_p, scale=scale)
    return out.transpose(1, 2).reshape(b, n, c3 // 3)


class Attention(TimmAttention):
    """timm's multi-head attention (same parameters and state dict) with :func:`attention` in place of SDPA."""

    def forward(self, x: Tensor, attn_mask: Optional[Tensor] = None, is_causal: bool = False) -> Tensor:
        if attn_mask is not None or is_causal or not self.fused_attn:
            return super().forward(x, attn_mask=attn_mask, is_causal=is_causal)
        if not (isinstance(self.q_norm, nn.Identity) and isinstance(self.k_norm, nn.Identity)):
            return super().forward(x)  # q/k norms sit between the projection and attention: timm's path
        gate = self.gate(x).sigmoid() if self.gate is not None else None
        x = qkv_attention(self.qkv(x), self.num_heads, self.attn_drop.p if self.training else 0.0, self.scale)
        x = self.norm(x)
        if gate is not None:
            x = x * gate
        return self.proj_drop(self.proj(x))
