"""Per-group thresholds: threshold.json, defaults, overrides, and MCut automatic thresholding.

threshold.json (optional, in the model folder or given by the user) is a JSON object with any of
``general``, ``character``, ``artist``, ``caption``, ``tags`` (numbers in 0..1). Missing keys (or a
missing file) take the defaults: 0.35 for general/caption/tags, 0.75 for character/artist (a model
may bring other defaults, e.g. JoyTag's reference 0.4). Explicit overrides (CLI flags, node inputs)
win over the file. ``mcut_general`` / ``mcut_character`` / ``mcut_artist`` switch a group to MCut:
the threshold falls in the largest gap between consecutive sorted scores.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields, replace
from pathlib import Path

import numpy as np

from tagloom.errors import InputFileError
from tagloom.jsonfile import read_json_object

GROUP_KEYS = ("general", "character", "artist", "caption", "tags")
# wd-tagger's reference never lets MCut drop the character threshold below this.
MCUT_CHARACTER_FLOOR = 0.15


@dataclass(frozen=True)
class Thresholds:
    general: float = 0.35
    character: float = 0.75
    artist: float = 0.75
    caption: float = 0.35
    tags: float = 0.35
    mcut_general: bool = False
    mcut_character: bool = False
    mcut_artist: bool = False

    def with_overrides(self, **values) -> "Thresholds":
        """A copy with the given values; None means 'keep'."""
        names = {f.name for f in fields(self)}
        clean = {}
        for k, v in values.items():
            if v is None:
                continue
            if k not in names:
                raise TypeError(f"unknown threshold {k!r}")
            if k in GROUP_KEYS:
                v = float(v)
                if not 0.0 <= v <= 1.0 or math.isnan(v):
                    raise ValueError(f"{k} threshold must be within 0..1, got {v}")
            clean[k] = v
        return replace(self, **clean)

    def to_dict(self) -> dict:
        return {f.name: getattr(self, f.name) for f in fields(self)}


def read_threshold_json(path, base: Thresholds | None = None) -> Thresholds:
    """threshold.json -> Thresholds over ``base`` (defaults). Malformed -> InputFileError."""
    path = Path(path)
    base = base or Thresholds()
    data = read_json_object(path, "threshold file")
    values = {}
    for key, value in data.items():
        if key in GROUP_KEYS:
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= float(value) <= 1.0:
                raise InputFileError(path, f"'{key}' must be a number within 0..1, got {value!r}")
            values[key] = float(value)
        elif key in ("mcut_general", "mcut_character", "mcut_artist"):
            if not isinstance(value, bool):
                raise InputFileError(path, f"'{key}' must be true or false, got {value!r}")
            values[key] = value
        # other keys (e.g. metrics a trainer writes beside the thresholds) are ignored on purpose
    return base.with_overrides(**values)


def model_thresholds(model_dir, base: Thresholds | None = None) -> Thresholds:
    """The thresholds a model folder brings (its threshold.json), else ``base``/defaults."""
    path = Path(model_dir) / "threshold.json"
    base = base or Thresholds()
    return read_threshold_json(path, base) if path.is_file() else base


def mcut_threshold(probs: np.ndarray) -> float:
    """Maximum Cut Thresholding (Largeron et al. 2012): the midpoint of the largest gap between
    consecutive scores in descending order. No scores -> 1.0; a single score is its own threshold."""
    p = np.sort(np.asarray(probs, dtype=np.float64))[::-1]
    if p.size == 0:
        return 1.0
    if p.size == 1:
        return float(p[0])
    gaps = p[:-1] - p[1:]
    t = int(np.argmax(gaps))
    return float((p[t] + p[t + 1]) / 2.0)


def find_threshold_file(name: str, search_dirs) -> Path:
    """A threshold file named by a node input: a name relative to one of ``search_dirs`` (the model
    folder, the models folder, ComfyUI's input folder), or an absolute path inside one of them
    (tagloom/workflow_paths.py: workflows are shared, so a path outside is refused rather than read)."""
    from tagloom.workflow_paths import find_file

    return find_file(name, search_dirs, "threshold file")
