"""FLOP counting and the matmul peak (ssast.evaluate.utilization), the basis of every benchmark row's fraction of peak."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from ssast.models.attention import qkv_attention
from ssast.evaluate.utilization import count_flops, count_flops_by_op, fraction_of_peak, matmul_peak


def test_a_linear_training_step_counts_forward_and_both_gradients():
    layer = torch.nn.Linear(32, 48)
    x = torch.randn(10, 32, requires_grad=True)
    assert count_flops(lambda: layer(x).sum().backward()) == 3 * 2 * 10 * 32 * 48
    assert count_flops_by_op(lambda: layer(x).sum().backward()) == {"aten::addmm": 2 * 10 * 32 * 48,
                                                                      "aten::mm": 2 * 2 * 10 * 32 * 48}
    with torch.no_grad():
        assert count_flops(lambda: layer(x)) == 2 * 10 * 32 * 48


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_attention_counts_the_same_on_every_path(dtype):
    b, h, n, d = 2, 3, 40, 16
    q = torch.randn(b, h, n, d, dtype=dtype, requires_grad=True)
    bmm = 2 * b * h * n * n * d  # one (n x d) @ (d x n) product per head
    # PyTorch's CPU flash kernel (not in torch's own table) and ssast's backward: 2 products forward, 5 backward
    assert count_flops(lambda: F.scaled_dot_product_attention(q, q, q).float().sum().backward()) == 7 * bmm
    qkv = torch.randn(b, n, 3 * h * d, dtype=dtype, requires_grad=True)  # ssast's attention takes the projection
    assert count_flops(lambda: qkv_attention(qkv, h).float().sum().backward()) == 7 * bmm
    with torch.no_grad():
        assert count_flops(lambda: qkv_attention(qkv, h)) == 2 * bmm


def test_matmul_peak_is_the_best_size_and_the_fraction_follows():
    rec = matmul_peak(torch.device("cpu"), torch.float32, sizes=(64, 128), repeats=2, min_seconds=0.01)
    assert rec["dtype"] == "float32" and set(rec["gflops_by_size"]) == {"64", "128"}
    assert rec["peak_gflops"] == max(rec["gflops_by_size"].values()) > 0
    assert fraction_of_peak(2e9, 3.0, 12.0) == pytest.approx((6.0, 0.5))
    assert fraction_of_peak(None, 3.0, 12.0) == (None, None) and fraction_of_peak(2e9, 3.0, None) == (None, None)
