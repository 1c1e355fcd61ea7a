"""Options of the tagger trainer, shared by the CLI and the ComfyUI node."""

from __future__ import annotations

import argparse
import json
from dataclasses import dataclass, field, fields
from pathlib import Path


@dataclass
class TaggerOptions:
    dataset: Path  # a dataset folder, or a `tagloom train prepare` output folder
    out: Path
    model_name: str = "eva02_large_patch14_448"
    image_size: int | None = None  # default: the model's own input size
    model_args: dict = field(default_factory=dict)  # extra timm create_model kwargs (e.g. drop_path_rate)
    init: str | None = None  # weights file / wd model folder / "timm" / "hf-hub:org/repo"; None = scratch
    epochs: int = 10
    batch_size: int = 32
    grad_accum: int = 1
    lr: float | None = None  # default 1e-4 (AdamW) or 2e-3 (LAMB)
    weight_decay: float = 0.05
    optimizer: str = "adamw"  # adamw | lamb
    loss: str = "bce"  # bce | asl | focal
    warmup: float = 0.05  # fraction of optimizer steps spent warming up
    clip_grad: float = 1.0
    precision: str = "auto"  # auto (bf16 on Ampere+ GPUs, fp16 on older ones, fp32 on CPU) | fp32 | bf16 | fp16
    loss_multiplier: float = 1.0  # constant loss scale (fp16 underflow guard / JoyTag-style x256)
    augment: str = "trivial"  # trivial (TrivialAugmentWide) | none
    patience: int = 0  # early stopping: epochs without better validation F1 (0 = off)
    min_count: int = 1
    val_fraction: float = 0.1
    seed: int = 0
    workers: int = 2  # data loader processes (parallel decoding)
    device: str = "auto"
    grad_checkpointing: bool = False
    compile: bool = False
    onnx: bool = True
    resume: bool = False


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("dataset", type=Path, help="dataset folder (images + .txt) or a `train prepare` output folder")
    p.add_argument("--out", type=Path, required=True, help="output model folder")
    p.add_argument("--model-name", default="eva02_large_patch14_448", help="any timm model name")
    p.add_argument("--image-size", type=int, default=None)
    p.add_argument("--model-args", default="{}", help='extra timm kwargs as JSON, e.g. \'{"drop_path_rate": 0.1}\'')
    p.add_argument("--init", default=None, help="weights: a .safetensors/.pth file, a wd model folder, 'timm' or hf-hub:ORG/REPO")
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--grad-accum", type=int, default=1)
    p.add_argument("--lr", type=float, default=None)
    p.add_argument("--weight-decay", type=float, default=0.05)
    p.add_argument("--optimizer", choices=["adamw", "lamb"], default="adamw")
    p.add_argument("--loss", choices=["bce", "asl", "focal"], default="bce")
    p.add_argument("--warmup", type=float, default=0.05, help="fraction of steps used for linear warmup")
    p.add_argument("--clip-grad", type=float, default=1.0)
    p.add_argument("--precision", choices=["auto", "fp32", "bf16", "fp16"], default="auto")
    p.add_argument("--loss-multiplier", type=float, default=1.0)
    p.add_argument("--augment", choices=["trivial", "none"], default="trivial")
    p.add_argument("--patience", type=int, default=0, help="early stopping after N epochs without better val F1")
    p.add_argument("--min-count", type=int, default=1)
    p.add_argument("--val-fraction", type=float, default=0.1)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--device", default="auto")
    p.add_argument("--grad-checkpointing", action="store_true")
    p.add_argument("--compile", action="store_true", help="torch.compile the model (GPU)")
    p.add_argument("--no-onnx", dest="onnx", action="store_false")
    p.add_argument("--resume", action="store_true", help="continue from OUT/checkpoints/last.pt")


def from_args(args: argparse.Namespace) -> TaggerOptions:
    values = {f.name: getattr(args, f.name) for f in fields(TaggerOptions) if hasattr(args, f.name)}
    if isinstance(values.get("model_args"), str):
        values["model_args"] = json.loads(values["model_args"] or "{}")
    return TaggerOptions(**values)
