"""The caption job's view of a tagger model: where it is, its labels and thresholds, and how one
row of probabilities becomes the caption/JSON a file gets.

Everything here defers to the interrogation core (tagloom.tagger): model resolution and download,
label lists, threshold.json, MCut, tag formatting and TagResult. The job only adds the batched
engines (tagloom.caption.engines) and the pipeline around them, so a caption written by
`tagloom caption` is the one `tagloom tag` gives for the same image and thresholds.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from tagloom.errors import TagLoomError


def square_pixels(image, size: int) -> np.ndarray:
    """The wd-v3/JoyTag reference geometry (composite on white, centred white square, bicubic to
    `size`) as uint8 RGB (size, size, 3): the single-image preprocessing stopped before its float
    conversion, which is exact because PIL resizes in uint8."""
    from tagloom.images import square_resized

    return np.asarray(square_resized(image, size), dtype=np.uint8)


@dataclass
class ModelChoice:
    """What the user asked for; picklable, so Ray workers can open the same model."""

    model: str | None = None  # name, hub repo id or folder; None = the configured default
    backend: str = "auto"  # auto | onnx | torch
    threshold_json: str | None = None
    thresholds: dict[str, Any] = field(default_factory=dict)  # general/character/artist/... overrides
    format: dict[str, Any] = field(default_factory=dict)  # FormatOptions overrides


@dataclass
class CaptionModel:
    path: Path
    backend: str
    family: str
    labels: Any  # tagloom.tagger.labels.Labels
    thresholds: Any  # tagloom.tagger.thresholds.Thresholds
    format_options: Any  # tagloom.tagger.formatting.FormatOptions
    input_size: int | None = None

    @classmethod
    def open(cls, choice: ModelChoice, backend: str | None = None) -> "CaptionModel":
        """Resolve (download if needed) the model and read its labels and thresholds; no weights yet:
        the tagger's one place for that (tagloom.tagger.bundle.open_bundle), plus the job's own
        threshold file, threshold overrides and formatting."""
        from tagloom.tagger.bundle import open_bundle
        from tagloom.tagger.formatting import FormatOptions

        bundle = open_bundle(choice.model, backend or choice.backend)
        thresholds = bundle.with_thresholds(choice.threshold_json, choice.thresholds)
        try:
            options = FormatOptions().with_overrides(**choice.format)
        except (ValueError, TypeError) as e:  # an unknown option
            raise TagLoomError(str(e)) from e
        return cls(path=bundle.path, backend=bundle.backend, family=bundle.family.name, labels=bundle.labels,
                   thresholds=thresholds, format_options=options, input_size=bundle.input_size)

    def interpret(self, probs: np.ndarray, file: str | None = None) -> dict:
        """One image's probabilities -> the JSON object `tagloom tag --json` prints."""
        from tagloom.tagger.result import interpret

        return interpret(probs, self.labels, self.thresholds, self.format_options, file=file).to_json()


def _config_input_size(model_dir: Path) -> int | None:
    from tagloom.tagger.bundle import config_input_size

    return config_input_size(model_dir)
