"""One place that opens a model bundle: where the model is, which backend and family, its labels and
thresholds, without loading weights. ``load_tagger`` (tagloom.tagger.api) and the batch captioner
(tagloom.caption.model) both start here; an engine (tagloom.tagger.runtime) then loads the weights.

    bundle = open_bundle("wd-eva02-large-tagger-v3", backend="auto")
    bundle.path, bundle.backend, bundle.family (ModelFamily), bundle.labels, bundle.thresholds
    engine = bundle.open_engine(EngineOptions(device="cpu"))
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from tagloom.errors import TagLoomError
from tagloom.tagger.families import ModelFamily, get_family
from tagloom.tagger.labels import Labels
from tagloom.tagger.registry import ModelSpec, resolve_model
from tagloom.tagger.thresholds import Thresholds, model_thresholds, read_threshold_json


@dataclass
class ModelBundle:
    path: Path
    backend: str  # "onnx" | "torch" (resolved, never auto)
    family: ModelFamily
    labels: Labels
    thresholds: Thresholds  # the model's defaults: threshold.json over the model's or family's own
    spec: ModelSpec | None = None  # a known model's registry entry
    input_size: int | None = None  # from config.json when the folder has one (ONNX: the engine reads the graph)

    @property
    def name(self) -> str:
        return self.spec.repo_id if self.spec else str(self.path)

    def with_thresholds(self, threshold_json=None, overrides: dict | None = None) -> Thresholds:
        """The thresholds after a user's threshold file and explicit overrides (None keeps a value)."""
        thresholds = self.thresholds
        if threshold_json:
            thresholds = read_threshold_json(threshold_json, thresholds)
        if overrides:
            try:
                thresholds = thresholds.with_overrides(**overrides)
            except (ValueError, TypeError) as e:  # a threshold outside 0..1, an unknown name
                raise TagLoomError(str(e)) from e
        return thresholds

    def open_engine(self, options=None):
        """Load the weights: an engine of tagloom.tagger.runtime."""
        from tagloom.tagger.runtime import open_engine

        return open_engine(self.path, self.backend, self.family, options)

    def check_outputs(self, engine) -> None:
        """A label list that does not belong to the weights is caught at load, not on the first image."""
        n_out = engine.output_count
        if n_out is not None and n_out != len(self.labels):
            raise TagLoomError(f"{self.path}: the model has {n_out} outputs but its label list has {len(self.labels)} tags")


def open_bundle(name_or_dir: str | os.PathLike | None = None, backend: str = "auto") -> ModelBundle:
    """Resolve (download if needed) a model and read its labels and thresholds; no weights yet."""
    resolved = resolve_model(name_or_dir, backend)
    family = get_family(resolved.family)
    path = Path(resolved.path)
    # A known model may bring its own defaults (JoyTag's 0.4); else the family's.
    base = resolved.spec.thresholds if resolved.spec and resolved.spec.thresholds else family.default_thresholds()
    return ModelBundle(path=path, backend=resolved.backend, family=family, labels=family.read_labels(path),
                       thresholds=model_thresholds(path, base), spec=resolved.spec,
                       input_size=config_input_size(path))


def config_input_size(model_dir: Path) -> int | None:
    """The input size config.json states (None without one, or when it is not a timm config)."""
    model_dir = Path(model_dir)
    if (model_dir / "config.json").is_file():
        from tagloom.tagger.timm_model import input_size, read_config

        try:
            return input_size(read_config(model_dir))
        except Exception:  # an ONNX-only folder may carry an unrelated config.json
            return None
    return None
