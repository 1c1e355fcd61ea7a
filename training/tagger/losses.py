"""Multi-label losses, each summed over classes and averaged over the batch (SmilingWolf sums BCE
over classes; the sum keeps rare tags from vanishing in a 10k-wide mean)."""

from __future__ import annotations


def bce(logits, targets):
    import torch.nn.functional as F

    return F.binary_cross_entropy_with_logits(logits, targets, reduction="sum") / logits.shape[0]


def focal(logits, targets, gamma: float = 2.0):
    import torch
    import torch.nn.functional as F

    ce = F.binary_cross_entropy_with_logits(logits, targets, reduction="none")
    p = torch.sigmoid(logits)
    p_t = p * targets + (1 - p) * (1 - targets)
    return (ce * (1 - p_t) ** gamma).sum() / logits.shape[0]


def make_loss(name: str):
    if name == "bce":
        return bce
    if name == "focal":
        return focal
    if name == "asl":
        from timm.loss import AsymmetricLossMultiLabel

        asl = AsymmetricLossMultiLabel(gamma_neg=4, gamma_pos=1, clip=0.05)
        return lambda logits, targets: asl(logits.float(), targets) / logits.shape[0]  # timm sums the batch too
    raise ValueError(f"unknown loss {name!r} (bce, asl, focal)")
