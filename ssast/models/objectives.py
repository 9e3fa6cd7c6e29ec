"""The two masked-patch objectives of SSAST: within-clip InfoNCE (with masked-patch accuracy) and MSE.

Both are computed in float32 whatever the autocast dtype, so bf16 training keeps an accurate loss.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["info_nce", "masked_mse"]


def info_nce(pred: Tensor, target: Tensor, axis: str = "authors") -> tuple[Tensor, Tensor]:
    """InfoNCE over the M masked patches of each clip; the other masked patches of the clip are the negatives.

    logits[b] = target[b] @ pred[b]^T (M x M, no temperature). ``axis="authors"`` normalises each row (over the
    predictions, as the authors' code does), ``"paper"`` each column (the paper's equation 1). Returns
    (loss, accuracy): loss is the mean of -log p of the matching pairs over clips and tokens; accuracy is the
    authors' masked-patch accuracy, whether argmax over targets of the row-softmaxed logits picks the matching one.
    """
    if pred.shape != target.shape or pred.dim() != 3:
        raise ValueError(f"pred {tuple(pred.shape)} and target {tuple(target.shape)} must both be (B, M, D)")
    if axis not in ("authors", "paper"):
        raise ValueError(f"InfoNCE axis must be 'authors' or 'paper', got {axis!r}")
    pred, target = pred.float(), target.float()
    with torch.autocast(device_type=pred.device.type, enabled=False):
        logits = torch.bmm(target, pred.transpose(1, 2))  # (B, M, M): row i = target i, column j = prediction j
    log_p = F.log_softmax(logits, dim=-1 if axis == "authors" else -2)
    loss = -torch.diagonal(log_p, dim1=-2, dim2=-1).mean()
    m = logits.shape[1]
    hits = F.softmax(logits, dim=-1).argmax(dim=1) == torch.arange(m, device=logits.device)
    return loss, hits.float().mean()


def masked_mse(pred: Tensor, target: Tensor) -> Tensor:
    """Mean squared error between predicted and raw target patches, in float32."""
    if pred.shape != target.shape:
        raise ValueError(f"pred {tuple(pred.shape)} and target {tuple(target.shape)} differ in shape")
    return F.mse_loss(pred.float(), target.float())
