"""Options of the LoRA trainer, shared by the CLI and the ComfyUI node."""

from __future__ import annotations

import argparse
from dataclasses import dataclass, fields
from pathlib import Path


@dataclass
class LoraOptions:
    dataset: Path
    base: str  # checkpoint file, name in models/checkpoints, or diffusers folder
    out: str  # .safetensors path, or a bare name saved into models/loras
    rank: int = 16
    alpha: float | None = None  # default: rank (scale 1)
    lr: float = 1e-4  # UNet learning rate
    text_encoder_lr: float = 0.0  # 0 = text encoder(s) frozen, no lora_te keys
    steps: int | None = None  # total optimizer steps (overrides epochs)
    epochs: int = 10
    batch_size: int = 1
    grad_accum: int = 1
    resolution: int = 512
    buckets: bool = True
    bucket_step: int = 64
    shuffle_caption: bool = False
    keep_tokens: int = 0
    caption_dropout: float = 0.0
    cache_latents: str = "memory"  # memory | disk (beside the training state) | none
    gradient_checkpointing: bool = False
    mixed_precision: str = "auto"  # auto (bf16 on Ampere+ GPUs, fp16 on older ones, no on CPU) | no | fp16 | bf16
    save_precision: str = "fp16"  # fp16 | bf16 | fp32
    min_snr_gamma: float = 0.0  # 0 = off; 5 is the paper's value
    noise_offset: float = 0.0
    lr_scheduler: str = "constant"  # constant | cosine
    warmup_steps: int = 0
    optimizer: str = "adamw"  # adamw | lamb
    weight_decay: float = 1e-2
    clip_grad: float = 1.0
    conv: bool = False  # also adapt the UNet's 1x1/3x3 convs in attention blocks' proj_in/out (SD1.5)
    sample_prompt: str = ""
    sample_every: int = 0  # steps; 0 = off
    sample_steps: int = 20
    save_every: int = 0  # steps between resumable states; 0 = once per epoch
    seed: int = 0
    device: str = "auto"
    resume: bool = False


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("dataset", type=Path, help="images + .txt/.caption captions (kohya N_name folders allowed)")
    p.add_argument("--base", required=True, help="checkpoint file, a name in models/checkpoints, or a diffusers folder")
    p.add_argument("--out", required=True, help="output .safetensors (a bare name goes into models/loras)")
    p.add_argument("--rank", type=int, default=16)
    p.add_argument("--alpha", type=float, default=None, help="LoRA alpha (default: rank)")
    p.add_argument("--lr", type=float, default=1e-4, help="UNet learning rate")
    p.add_argument("--text-encoder-lr", type=float, default=0.0, help="text encoder learning rate (0: not trained)")
    p.add_argument("--steps", type=int, default=None)
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--batch-size", type=int, default=1)
    p.add_argument("--grad-accum", type=int, default=1)
    p.add_argument("--resolution", type=int, default=512)
    p.add_argument("--no-buckets", dest="buckets", action="store_false")
    p.add_argument("--bucket-step", type=int, default=64)
    p.add_argument("--shuffle-caption", action="store_true")
    p.add_argument("--keep-tokens", type=int, default=0, help="tags kept in place when shuffling")
    p.add_argument("--caption-dropout", type=float, default=0.0)
    p.add_argument("--cache-latents", choices=["memory", "disk", "none"], default="memory")
    p.add_argument("--gradient-checkpointing", action="store_true")
    p.add_argument("--mixed-precision", choices=["auto", "no", "fp16", "bf16"], default="auto")
    p.add_argument("--save-precision", choices=["fp16", "bf16", "fp32"], default="fp16")
    p.add_argument("--min-snr-gamma", type=float, default=0.0)
    p.add_argument("--noise-offset", type=float, default=0.0)
    p.add_argument("--lr-scheduler", choices=["constant", "cosine"], default="constant")
    p.add_argument("--warmup-steps", type=int, default=0)
    p.add_argument("--optimizer", choices=["adamw", "lamb"], default="adamw")
    p.add_argument("--weight-decay", type=float, default=1e-2)
    p.add_argument("--clip-grad", type=float, default=1.0)
    p.add_argument("--conv", action="store_true", help="also train LoRA on attention blocks' proj_in/proj_out convs")
    p.add_argument("--sample-prompt", default="")
    p.add_argument("--sample-every", type=int, default=0)
    p.add_argument("--sample-steps", type=int, default=20)
    p.add_argument("--save-every", type=int, default=0, help="steps between resumable states (default: each epoch)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="auto")
    p.add_argument("--resume", action="store_true", help="continue from the state saved beside --out")


def from_args(args: argparse.Namespace) -> LoraOptions:
    return LoraOptions(**{f.name: getattr(args, f.name) for f in fields(LoraOptions) if hasattr(args, f.name)})
