"""ONNX export with the wd tagger I/O convention, used by tests and by our trainer.

The exported graph takes ``input``: float32 NHWC, BGR, 0..255 at the model's size, and returns
``output``: sigmoid probabilities (N, num_labels), like SmilingWolf's wd-v3 model.onnx files.
"""

from __future__ import annotations

from pathlib import Path


def wd_wrapper(model, mean, std):
    """The network wrapped to take wd-convention input and return probabilities."""
    import torch

    class WdIO(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.model = model
            self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1))
            self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1))

        def forward(self, x):
            x = x.permute(0, 3, 1, 2) / 255.0  # NHWC 0..255 -> NCHW 0..1, channels stay BGR
            x = (x - self.mean) / self.std
            return torch.sigmoid(self.model(x))

    return WdIO().eval()


def export_onnx(model, path: Path, image_size: int, mean, std, opset: int = 17) -> Path:
    """Write model.onnx (weights inline when under 2 GB, else in a .data sidecar beside it)."""
    import torch

    path = Path(path)
    wrapper = wd_wrapper(model, mean, std)
    dummy = torch.rand(2, image_size, image_size, 3) * 255
    # The legacy exporter traces EVA's fused attention badly: switch every attention module to the
    # explicit path for the export and restore it afterwards (timm reads its flag at construction).
    fused = [(m, m.fused_attn) for m in wrapper.modules() if hasattr(m, "fused_attn")]
    for m, _ in fused:
        m.fused_attn = False
    try:
        with torch.no_grad():
            torch.onnx.export(
                wrapper,
                (dummy,),
                str(path),
                input_names=["input"],
                output_names=["output"],
                dynamic_axes={"input": {0: "batch"}, "output": {0: "batch"}},
                opset_version=opset,
                dynamo=False,
            )
    finally:
        for m, value in fused:
            m.fused_attn = value
    return path
