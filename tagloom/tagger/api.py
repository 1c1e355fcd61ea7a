"""The public tagging API (stable: the batch captioner and the trainer build on it; docs/tagger.md).

    tagger = load_tagger("SmilingWolf/wd-eva02-large-tagger-v3", backend="auto", device="auto")
    tagger.input_size, tagger.labels, tagger.thresholds, tagger.backend, tagger.device, tagger.provider
    x = np.stack([tagger.preprocess(pil_image) for pil_image in images])   # model-native layout
    probs = tagger.predict(x)                     # (N, L) float32 sigmoid probabilities
    result = interpret(probs[0], tagger.labels, tagger.thresholds, FormatOptions())  # -> TagResult
    results = tagger.tag_images([path_or_pil, ...])                          # all of the above
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Callable, Iterable

import numpy as np

from tagloom.errors import TagLoomError
from tagloom.tagger.formatting import FormatOptions
from tagloom.tagger.images import load_image
from tagloom.tagger.families import get_family
from tagloom.tagger.labels import Labels, read_labels  # noqa: F401 - importable here before
from tagloom.tagger.registry import ResolvedModel, resolve_model  # noqa: F401
from tagloom.tagger.result import TagResult, interpret
from tagloom.tagger.thresholds import Thresholds, model_thresholds  # noqa: F401


class Tagger:
    """A loaded tagger model: preprocessing, inference and interpretation for one model folder."""

    def __init__(self, resolved: ResolvedModel, runner, labels: Labels, thresholds: Thresholds):
        """``resolved``: a ResolvedModel or a ModelBundle (path, family, spec); ``runner``: an engine
        of tagloom.tagger.runtime."""
        self.model_dir: Path = resolved.path
        self.name: str = resolved.spec.repo_id if resolved.spec else str(resolved.path)
        self.model_family = get_family(resolved.family)  # the family record: layout, normalisation, ...
        self.family: str = self.model_family.name  # "wd" | "joytag" | "tagloom"
        self.backend: str = runner.name  # "onnx" | "torch"
        self.runner = runner
        self.labels = labels
        self.thresholds = thresholds  # the model's defaults (threshold.json or built-in)
        size = getattr(runner, "input_size", None) or getattr(resolved, "input_size", None)
        self.input_size: int = int(size or self.model_family.input_size)

    # --- what the backend really uses -----------------------------------------------------------
    @property
    def device(self) -> str:
        """'cpu' or 'cuda' as really used (ONNX Runtime may fall back to the CPU silently)."""
        return self.runner.device

    @property
    def batch_size(self) -> int:
        """Images per model call that run fastest here: 1 on the CPU, where a batch brings no more
        parallelism than the threads inside one call and larger activations cost cache (ViT-B/16
        448 on ONNX Runtime, 2 cores: 1.04 img/s one at a time, 0.88 in batches of 8; docs/
        benchmarks.md), 8 on a GPU."""
        return 1 if self.device == "cpu" else 8

    @property
    def provider(self) -> str:
        """ONNX Runtime's execution provider in use, or 'torch:<device>'."""
        return self.runner.provider

    @property
    def layout(self) -> str:
        """'NHWC' (wd-v3: BGR 0..255) or 'NCHW' (JoyTag: RGB, CLIP mean/std): the family record's."""
        return self.model_family.layout

    # --- the steps ------------------------------------------------------------------------------
    def preprocess(self, image) -> np.ndarray:
        """A PIL image (any mode) -> one model input without the batch axis, float32."""
        if image.mode not in ("RGB", "RGBA"):
            from tagloom.tagger.images import ensure_rgba_or_rgb

            image = ensure_rgba_or_rgb(image)
        return self.model_family.preprocess(image, self.input_size)

    def preprocess_file(self, path) -> np.ndarray:
        """An image file -> one model input; bad files raise InputFileError naming the file."""
        from tagloom.images import draft_hint

        return self.preprocess(load_image(path, max_side_hint=draft_hint(self.input_size)))

    def predict(self, batch: np.ndarray) -> np.ndarray:
        """(N, ...) model inputs -> (N, L) float32 probabilities."""
        batch = np.asarray(batch, dtype=np.float32)
        if batch.ndim == 3:
            batch = batch[None]
        if batch.shape[0] == 0:
            return np.zeros((0, len(self.labels)), np.float32)
        return self.runner.run(batch)

    def predict_tensor(self, batch):
        """A torch tensor batch -> torch probabilities on the backend's device. On the torch backend
        nothing leaves the GPU; on ONNX it round-trips through numpy."""
        return self.runner.run_tensor(batch)

    def interpret(self, probs_row, thresholds: Thresholds | None = None, options: FormatOptions | None = None,
                  file: str | None = None) -> TagResult:
        return interpret(probs_row, self.labels, thresholds or self.thresholds, options, file)

    def tag_images(
        self,
        images: Iterable,
        thresholds: Thresholds | None = None,
        options: FormatOptions | None = None,
        batch_size: int | None = None,
        progress: Callable[[int, int], None] | None = None,
    ) -> list[TagResult]:
        """PIL images and/or file paths -> one TagResult each, in order.

        ``batch_size``: images per model call (default :attr:`batch_size`, what runs fastest on the
        device). ``progress(done, total)`` is called after every batch; it may raise to cancel
        (ComfyUI's ProgressBar does). A bad file raises InputFileError naming it.
        """
        items = list(images)
        total = len(items)
        step = max(1, int(batch_size or self.batch_size))  # None: what runs fastest on this device
        results: list[TagResult] = []
        for start in range(0, total, step):
            chunk = items[start : start + step]
            arrays, files = [], []
            for item in chunk:
                if isinstance(item, (str, os.PathLike)):
                    arrays.append(self.preprocess_file(item))
                    files.append(str(item))
                else:
                    arrays.append(self.preprocess(item))
                    files.append(getattr(item, "filename", None) or None)
            probs = self.predict(np.stack(arrays))
            results.extend(self.interpret(p, thresholds, options, f) for p, f in zip(probs, files))
            if progress is not None:
                progress(len(results), total)
        return results

    def unload(self) -> None:
        """Free the weights (the object is unusable afterwards)."""
        if self.runner is not None:
            self.runner.unload()

    def __repr__(self) -> str:
        return f"Tagger({self.name!r}, backend={self.backend}, device={self.device}, provider={self.provider}, labels={len(self.labels)})"


def load_tagger(name_or_dir: str | os.PathLike | None = None, backend: str = "auto", device: str = "auto",
                precision: str = "fp32", options=None) -> Tagger:
    """Load a tagger by name, repo id or folder (downloaded on first use). See the module docstring.

    ``precision``: fp32 (default); on the torch backend bf16 or fp16 autocast on GPUs (auto: bf16 on
    GPUs with bf16 hardware); on the ONNX backend int8, the weights quantized once for the CPU
    (2.5x faster there, scores within a few thousandths; tagloom.tagger.quantize). ``options``: a tagloom.tagger.runtime.EngineOptions for
    the rest (threads, spinning, io_binding, compile, batch_size); ``device`` and ``precision`` are
    the arguments'.
    """
    from dataclasses import replace

    from tagloom.tagger.bundle import open_bundle
    from tagloom.tagger.runtime import EngineOptions, check_precision, engine_class

    bundle = open_bundle(name_or_dir, backend)
    check_precision(precision)
    if precision not in engine_class(bundle.backend).precisions:
        if precision == "int8":
            raise TagLoomError(f"precision int8 is for ONNX models on the CPU; {bundle.name} runs on the "
                               f"{bundle.backend} backend (use backend onnx, or fp32/bf16)")
        precision = "fp32"  # ONNX graphs run as exported: the argument is for the torch backend
    options = replace(options or EngineOptions(autocast=True), device=device, precision=precision)
    runner = bundle.open_engine(options)
    tagger = Tagger(bundle, runner, bundle.labels, bundle.thresholds)
    try:
        bundle.check_outputs(runner)
    except TagLoomError:
        tagger.unload()
        raise
    return tagger
