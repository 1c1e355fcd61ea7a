"""The mixed precision a trainer uses when the user leaves it on 'auto'."""

from __future__ import annotations


def auto_mixed_precision(device) -> str | None:
    """'bf16' on GPUs with bf16 hardware (compute capability 8.0+: Ampere, Ada, Hopper, ...),
    'fp16' (with a GradScaler) on older GPUs, None (full fp32) on the CPU.

    Not torch.cuda.is_bf16_supported(): it answers True on a T4 or V100 too, where bf16 is
    emulated and trains slower than fp32, while their fp16 tensor cores are the fast path."""
    import torch

    if device.type != "cuda":
        return None
    return "bf16" if torch.cuda.get_device_capability(device)[0] >= 8 else "fp16"
