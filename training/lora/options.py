"""Options of the LoRA trainer, declared once (tagloom/options.py): the CLI's flags and help, the
ComfyUI Train node's flag strings and the options record all come from these fields."""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path

from tagloom import options as _opt
from tagloom.options import option

# The same words as the tagger trainer (training/tagger/options.py) for the same things; the older
# flags stay as aliases so scripts and saved workflows keep working.
PRECISIONS = ["auto", "no", "fp16", "bf16"]


@dataclass
class LoraOptions:
    dataset: Path = option(help="images + .txt/.caption captions (kohya N_name folders allowed)", positional=True)
    base: str = option(help="checkpoint file, a name in models/checkpoints, or a diffusers folder")
    out: str = option(help="output .safetensors (a bare name goes into models/loras)")
    rank: int = option(16, "LoRA rank (dim)")
    alpha: float | None = option(None, "LoRA alpha (default: the rank, a scale of 1)")
    lr: float = option(1e-4, "UNet learning rate")
    text_encoder_lr: float = option(0.0, "text encoder learning rate (0: text encoders frozen, no lora_te keys)")
    steps: int | None = option(None, "total optimizer steps; overrides --epochs (default: from the epochs)")
    epochs: int = option(10, "passes over the dataset")
    batch_size: int = option(1, "images per step")
    grad_accum: int = option(1, "steps whose gradients are summed before each optimizer step")
    resolution: int = option(512, "training resolution (the bucket area is resolution²)")
    buckets: bool = option(True, "aspect-ratio buckets (--no-buckets: square crops)")
    bucket_step: int = option(64, "bucket side lengths are multiples of this")
    shuffle_caption: bool = option(False, "shuffle the caption's tags every step")
    keep_tokens: int = option(0, "tags kept in place at the front when shuffling")
    caption_dropout: float = option(0.0, "probability of training a step with an empty caption")
    cache_latents: str = option("memory", "where VAE latents are cached", choices=["memory", "disk", "none"])
    gradient_checkpointing: bool = option(False, "trade compute for memory", flags=("--gradient-checkpointing", "--grad-checkpointing"))
    precision: str = option("auto", "autocast precision: auto = bf16 on Ampere+ GPUs, fp16 on older ones, none on the CPU",
                            flags=("--precision", "--mixed-precision"), choices=PRECISIONS)
    save_precision: str = option("fp16", "dtype of the saved LoRA", choices=["fp16", "bf16", "fp32"])
    min_snr_gamma: float = option(0.0, "Min-SNR loss weighting gamma (0: off; 5 is the paper's value)")
    noise_offset: float = option(0.0, "noise offset (brighter/darker images)")
    lr_scheduler: str = option("constant", "learning-rate schedule", choices=["constant", "cosine"])
    warmup_steps: int = option(0, "linear warm-up steps")
    optimizer: str = option("adamw", "optimizer", choices=["adamw", "lamb"])
    weight_decay: float = option(1e-2, "weight decay")
    clip_grad: float = option(1.0, "gradient norm clipping (0: off)")
    conv: bool = option(False, "also train LoRA on attention blocks' proj_in/proj_out convs (SD1.5)")
    sample_prompt: str = option("", "prompt for sample images during training (empty: none)")
    sample_every: int = option(0, "steps between sample images (0: off)")
    sample_steps: int = option(20, "sampler steps of each sample image")
    save_every: int = option(0, "steps between resumable states (0: once per epoch)")
    seed: int = option(0, "random seed")
    device: str = option("auto", "auto, cpu, cuda or cuda:N")
    resume: bool = option(False, "continue from the state saved beside --out")

    @property
    def mixed_precision(self) -> str:  # the field's former name
        return self.precision


def add_arguments(p: argparse.ArgumentParser) -> None:
    _opt.add_arguments(p, LoraOptions)


def from_args(args: argparse.Namespace) -> LoraOptions:
    return _opt.from_args(LoraOptions, args)
