"""Helpers shared by the tagger tests: tiny model folders built once per test process (no downloads)."""

from __future__ import annotations

import functools
import shutil
import tempfile
from pathlib import Path

from tiny_models import make_tiny_tagger

JOYTAG_TAGS = ["1girl", "solo", "long_hair", "smile", "^_^", "open_mouth", "simple_background", "white_background"]


@functools.lru_cache(maxsize=None)
def _tiny_dir() -> Path:
    root = Path(tempfile.mkdtemp(prefix="tagloom-tiny-"))
    return make_tiny_tagger(root / "tiny-eva02")


def tiny_model(dest: Path | None = None) -> Path:
    """The tiny EVA-02 wd-style folder (config.json, model.safetensors, selected_tags.csv, model.onnx);
    copied to ``dest`` when given so a test may modify it."""
    src = _tiny_dir()
    if dest is None:
        return src
    shutil.copytree(src, dest)
    return dest


@functools.lru_cache(maxsize=None)
def _tiny_joytag_dir() -> Path:
    """A JoyTag-shaped folder: model.onnx taking NCHW CLIP-normalised RGB and returning logits, plus
    top_tags.txt. The network is a tiny conv net, not JoyTag's ViT: what is tested is the I/O contract."""
    import torch

    root = Path(tempfile.mkdtemp(prefix="tagloom-joytag-")) / "joytag"
    root.mkdir(parents=True)
    torch.manual_seed(1)
    net = torch.nn.Sequential(
        torch.nn.Conv2d(3, 8, 4, stride=4), torch.nn.GELU(), torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(),
        torch.nn.Linear(8, len(JOYTAG_TAGS)),
    ).eval()
    with torch.no_grad():
        net[-1].weight.normal_(0, 2.0)
    torch.onnx.export(net, (torch.randn(1, 3, 32, 32),), str(root / "model.onnx"), input_names=["input"],
                      output_names=["output"], dynamic_axes={"input": {0: "batch"}, "output": {0: "batch"}},
                      opset_version=17, dynamo=False)
    (root / "top_tags.txt").write_text("\n".join(JOYTAG_TAGS) + "\n")
    return root


def tiny_joytag(dest: Path | None = None) -> Path:
    src = _tiny_joytag_dir()
    if dest is None:
        return src
    shutil.copytree(src, dest)
    return dest
