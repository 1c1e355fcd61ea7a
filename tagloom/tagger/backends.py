"""The tagger's backends, kept under their old names: both are the one runtime's engines
(tagloom.tagger.runtime) with a ``Tagger``'s options (ONNX Runtime's defaults; torch with fp32
weights and autocast for bf16/fp16).

    OnnxBackend(onnx_path, device="auto", output="probs")   # output="logits": JoyTag's convention
    TorchBackend(model_dir, device="auto", precision="fp32")
    backend.run(batch) -> (N, L) probabilities, backend.run_tensor(t), backend.unload()

``onnx_session``, ``torch_device``, ``sigmoid``, ``check_device`` and ``DEVICES`` are the runtime's.
"""

from __future__ import annotations

from tagloom.tagger.families import JOYTAG, WD_V3
from tagloom.tagger.runtime import (  # noqa: F401
    DEVICES,
    EngineOptions,
    OnnxEngine,
    TorchEngine,
    check_device,
    onnx_session,
    sigmoid,
    torch_device,
)


class OnnxBackend(OnnxEngine):
    """A model.onnx with ONNX Runtime's default session options (one interactive image)."""

    def __init__(self, onnx_path, device: str = "auto", output: str = "probs", family=None):
        """``output``: 'probs' when the graph ends in a sigmoid (wd-v3, ours), 'logits' (JoyTag);
        ``family`` (a family name or record) says both, and the layout, at once."""
        if family is None:
            family = JOYTAG if output == "logits" else WD_V3
        super().__init__(onnx_path, family, EngineOptions(device=device))


class TorchBackend(TorchEngine):
    """A timm wd-style folder with fp32 weights and autocast for bf16/fp16."""

    def __init__(self, model_dir, device: str = "auto", precision: str = "fp32", family=None):
        super().__init__(model_dir, family or WD_V3, EngineOptions(device=device, precision=precision, autocast=True))
