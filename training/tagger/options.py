"""Options of the tagger trainer, declared once (tagloom/options.py): the CLI's flags and help, the
ComfyUI Train node's flag strings and the options record all come from these fields."""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path

from tagloom import options as _opt
from tagloom import names
from tagloom.options import option


@dataclass
class TaggerOptions:
    dataset: Path = option(help="dataset folder (images + .txt) or a `tagloom train prepare` output folder", positional=True)
    out: Path = option(help="output model folder (loads in `tagloom tag --model DIR` and the Interrogate node)")
    model_name: str = option("eva02_large_patch14_448", "any timm model name")
    # The LoRA trainer's word for the input size; --image-size (timm's word) stays as an alias.
    resolution: int | None = option(None, "input size in pixels (default: the model's own)", flags=("--resolution", "--image-size"))
    model_args: dict = option(help='extra timm create_model kwargs as JSON, e.g. \'{"drop_path_rate": 0.1}\'',
                              default_factory=dict)
    init: str | None = option(None, "start weights: a .safetensors/.pth file, a wd model folder, 'timm' or "
                              "hf-hub:ORG/REPO (default: from scratch)")
    epochs: int = option(10, "passes over the dataset")
    batch_size: int = option(32, "images per step")
    grad_accum: int = option(1, "steps whose gradients are summed before each optimizer step")
    lr: float | None = option(None, "learning rate (default: 1e-4 with AdamW, 2e-3 with LAMB)")
    weight_decay: float = option(0.05, "weight decay")
    optimizer: str = option("adamw", "optimizer", choices=["adamw", "lamb"])
    loss: str = option("bce", "loss", choices=["bce", "asl", "focal"])
    warmup: float = option(0.05, "fraction of the optimizer steps spent in linear warm-up")
    clip_grad: float = option(1.0, "gradient norm clipping (0: off)")
    precision: str = option("auto", "autocast precision: auto = bf16 on Ampere+ GPUs, fp16 on older ones, fp32 on the CPU",
                            choices=list(names.PRECISIONS))
    loss_multiplier: float = option(1.0, "constant loss scale (fp16 underflow guard; JoyTag uses 256)")
    augment: str = option("trivial", "augmentation: TrivialAugmentWide or none", choices=["trivial", "none"])
    patience: int = option(0, "early stopping after N epochs without a better validation F1 (0: off)")
    min_count: int = option(1, "keep tags on at least N images")
    val_fraction: float = option(0.1, "share of the images held out for validation")
    seed: int = option(0, "random seed")
    workers: int = option(2, "data loader processes (parallel decoding)")
    device: str = option("auto", "auto, cpu, cuda or cuda:N")
    gradient_checkpointing: bool = option(False, "trade compute for memory", flags=("--gradient-checkpointing", "--grad-checkpointing"))
    compile: bool = option(False, "torch.compile the model (GPU)")
    onnx: bool = option(True, "also export model.onnx (--no-onnx: skip the export)")
    resume: bool = option(False, "continue from OUT/checkpoints/last.pt")

    @property
    def image_size(self) -> int | None:  # the field's former name
        return self.resolution

    @property
    def grad_checkpointing(self) -> bool:  # the field's former name
        return self.gradient_checkpointing


def add_arguments(p: argparse.ArgumentParser) -> None:
    _opt.add_arguments(p, TaggerOptions)


def from_args(args: argparse.Namespace) -> TaggerOptions:
    return _opt.from_args(TaggerOptions, args)
