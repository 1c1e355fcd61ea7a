"""Tiny models built from configs for tests (no downloads): a timm EVA-02 tagger folder in the same
layout as SmilingWolf's wd-v3 repos and our trainer's output."""

from __future__ import annotations

import csv
import json
from pathlib import Path

# 4 ratings, then general, character, artist tags: the wd selected_tags.csv layout.
TINY_TAGS = [
    ("general", 9), ("sensitive", 9), ("questionable", 9), ("explicit", 9),
    ("1girl", 0), ("solo", 0), ("long_hair", 0), ("smile", 0), ("twintails", 0), ("^_^", 0),
    ("open_mouth", 0), ("school_uniform", 0), ("hatsune_miku", 4), ("hakurei_reimu", 4),
    ("wlop", 1), ("ask_(askzy)", 1),
]


def write_selected_tags(path: Path, tags=TINY_TAGS) -> Path:
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["tag_id", "name", "category", "count"])
        for i, (name, cat) in enumerate(tags):
            w.writerow([1000 + i, name, cat, 10000 - i])
    return path


def tiny_eva02_config(num_classes: int, image_size: int = 56) -> dict:
    return {
        "architecture": "eva02_large_patch14_448",
        "num_classes": num_classes,
        "model_args": {
            "img_size": image_size, "embed_dim": 32, "depth": 2, "num_heads": 2,
            "ref_feat_shape": [4, 4], "global_pool": "avg",
        },
        "pretrained_cfg": {
            "input_size": [3, image_size, image_size], "mean": [0.5, 0.5, 0.5], "std": [0.5, 0.5, 0.5],
            "interpolation": "bicubic", "crop_pct": 1.0,
        },
    }


def make_tiny_tagger(out: Path, image_size: int = 56, onnx: bool = True, seed: int = 0) -> Path:
    """A complete wd-style model folder with random weights whose outputs spread over 0..1."""
    import torch
    from safetensors.torch import save_file

    from tagloom.tagger.export import export_onnx
    from tagloom.tagger.timm_model import create_model

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    config = tiny_eva02_config(len(TINY_TAGS), image_size)
    torch.manual_seed(seed)
    model = create_model(config).eval()
    # timm's head init makes logits ~1e-4, which would hide preprocessing errors: widen it.
    with torch.no_grad():
        model.head.weight.normal_(0, 1.0)
        model.head.bias.normal_(0, 1.0)
    (out / "config.json").write_text(json.dumps(config, indent=2))
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(out / "model.safetensors"))
    write_selected_tags(out / "selected_tags.csv")
    if onnx:
        export_onnx(model, out / "model.onnx", image_size, config["pretrained_cfg"]["mean"], config["pretrained_cfg"]["std"])
    return out
