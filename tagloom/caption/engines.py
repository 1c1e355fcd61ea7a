"""The caption job's engines: the one model runtime (tagloom.tagger.runtime) with a folder job's options.

Input: a batch of the square RGB pixels the decoders make, either a numpy uint8 array
(B, S, S, 3) from the CPU decoders or a torch uint8 tensor (B, 3, S, S) already on the GPU from
the GPU decoder. Output: float32 numpy (B, L) sigmoid probabilities, the same numbers ``Tagger``
gives (the same engine classes; tests/test_runtime.py).

A folder job wants other settings than one interactive image (``job_options``): ONNX Runtime with
all cores but no busy-spinning threads (spinning would steal the cores the decoders need between
batches), IO binding from GPU tensors on CUDA; torch with weights in bf16/fp16 on CUDA (faster
than autocast over fp32 weights), channels-last, optional torch.compile with the batch padded to
one shape so it compiles once. ``OnnxEngine``, ``TorchEngine``, ``make_engine``, ``to_model_input``
and ``auto_precision`` keep their old signatures.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from tagloom import names
from tagloom.tagger import runtime
from tagloom.tagger.families import CLIP_MEAN as _CLIP_MEAN, CLIP_STD as _CLIP_STD, get_family
from tagloom.tagger.runtime import EngineOptions, auto_precision  # noqa: F401

CLIP_MEAN = np.asarray(_CLIP_MEAN, np.float32)
CLIP_STD = np.asarray(_CLIP_STD, np.float32)
PRECISIONS = names.INFERENCE_PRECISIONS


def to_model_input(pixels: np.ndarray, family) -> np.ndarray:
    """uint8 RGB (B, S, S, 3) -> the family's float32 input, exactly as tagloom.tagger.preprocess."""
    return get_family(family).to_input(pixels)


def job_options(device: str, precision: str = "auto", compile: bool = False, threads: int | None = None,
                batch_size: int = 0) -> EngineOptions:
    """A caption job's engine options: every core for ONNX Runtime unless told (no spinning)."""
    from tagloom.caption.decode import default_workers

    # Idle ORT threads spin for a while by default; in a pipeline that burns the cores the
    # decoders are waiting for: 15 -> 18 img/s on 2 cores (docs/benchmarks.md, caption section).
    return EngineOptions(device=device, threads=threads or default_workers(), spinning=False, io_binding=True,
                         precision=precision, autocast=False, compile=compile, batch_size=batch_size)


class OnnxEngine(runtime.OnnxEngine):
    def __init__(self, model_dir: Path, family: str = "wd", device: str = "cpu", threads: int | None = None):
        super().__init__(Path(model_dir) / "model.onnx", family, job_options(device, "auto", threads=threads))


class TorchEngine(runtime.TorchEngine):
    """A timm wd-style tagger (config.json + model.safetensors)."""

    def __init__(self, model_dir: Path, device: str = "cpu", precision: str = "auto", compile: bool = False,
                 batch_size: int = 0, family: str = "wd"):
        super().__init__(model_dir, family, job_options(device, precision, compile, batch_size=batch_size))


def make_engine(model, device: str, precision: str = "auto", compile: bool = False, threads: int | None = None,
                batch_size: int = 0):
    """The engine for a CaptionModel (tagloom.caption.model), or anything with ``path``, ``backend``
    and ``family``, on 'cpu' or 'cuda[:N]'."""
    return runtime.open_engine(model.path, model.backend, model.family,
                               job_options(device, precision, compile, threads, batch_size))
