"""Model code for timm taggers: build the network from a model folder's config.json and load its
weights. No file discovery or downloading here (see tagloom.tagger.models for that).

A model folder (what the wd-v3 timm repos hold and what our trainer writes):
  config.json        {"architecture": timm name, "num_classes": N, "model_args": {...},
                      "pretrained_cfg": {"input_size": [3, S, S], "mean": [...], "std": [...], ...}}
  model.safetensors  the timm state dict
  selected_tags.csv  tag_id,name,category,count
  model.onnx         optional, wd I/O convention (see tagloom.tagger.export)
  threshold.json     optional per-group thresholds
The network takes NCHW float input in BGR channel order, normalised with the config's mean/std,
as in SmilingWolf's reference wdv3 timm script, and returns logits.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tagloom.errors import InputFileError
from tagloom.jsonfile import read_json_object

DEFAULT_MEAN = (0.5, 0.5, 0.5)
DEFAULT_STD = (0.5, 0.5, 0.5)


def read_config(model_dir: Path) -> dict[str, Any]:
    path = Path(model_dir) / "config.json"
    config = read_json_object(path, "a timm model folder needs config.json")
    if "architecture" not in config:
        raise InputFileError(path, "has no 'architecture' (the timm model name)")
    return config


def input_size(config: dict[str, Any]) -> int:
    size = config.get("pretrained_cfg", {}).get("input_size") or [3, 448, 448]
    return int(size[-1])


def mean_std(config: dict[str, Any]) -> tuple[tuple[float, ...], tuple[float, ...]]:
    cfg = config.get("pretrained_cfg", {})
    return tuple(cfg.get("mean", DEFAULT_MEAN)), tuple(cfg.get("std", DEFAULT_STD))


def create_model(config: dict[str, Any]):
    """An untrained timm network shaped as config.json says."""
    import timm

    kwargs = dict(config.get("model_args") or {})
    kwargs.setdefault("num_classes", config.get("num_classes"))
    if kwargs["num_classes"] is None:
        kwargs.pop("num_classes")
    return timm.create_model(config["architecture"], pretrained=False, **kwargs)


def load_model(model_dir: Path):
    """The network with its weights from model.safetensors, in eval mode on the CPU."""
    from safetensors.torch import load_file

    model_dir = Path(model_dir)
    config = read_config(model_dir)
    weights = model_dir / "model.safetensors"
    if not weights.is_file():
        raise InputFileError(weights, "missing: the model folder has no weights (model.safetensors)")
    model = create_model(config)
    try:
        state = load_file(str(weights))
    except Exception as e:  # safetensors raises its own error types for truncated files
        raise InputFileError(weights, f"cannot be read as safetensors: {e}") from e
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise InputFileError(
            weights,
            f"does not match {config['architecture']} from config.json "
            f"(missing {len(missing)} keys e.g. {missing[:3]}, unexpected {len(unexpected)} e.g. {unexpected[:3]})",
        )
    return model.eval()
