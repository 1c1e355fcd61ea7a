"""Image tagging with wd-v3 (EVA-02 Large by default) and JoyTag, on ONNX Runtime or PyTorch/timm.

Public API (stable; documented in docs/tagger.md):
    load_tagger(name_or_dir=None, backend="auto", device="auto") -> Tagger
    Tagger.input_size / labels / thresholds / backend / device / provider / layout
    Tagger.preprocess(pil) -> np.ndarray, Tagger.predict(batch) -> (N, L) probs,
    Tagger.predict_tensor(torch batch), Tagger.tag_images(images) -> list[TagResult]
    interpret(probs_row, labels, thresholds, options) -> TagResult
    Thresholds, FormatOptions, TagResult, load_image
The one runtime under it (docs/tagger.md "Model families and the runtime"):
    get_family / ModelFamily (families as data), open_bundle -> ModelBundle (path, backend, family,
    labels, thresholds), open_engine(folder, backend, family, EngineOptions(...)) -> engine
Importing this package is cheap (numpy only); onnxruntime/torch load when a model does.
"""

from tagloom.tagger.api import Tagger, load_tagger
from tagloom.tagger.bundle import ModelBundle, open_bundle
from tagloom.tagger.families import FAMILIES, ModelFamily, family_of_dir, get_family
from tagloom.tagger.formatting import FormatOptions, join_tags
from tagloom.tagger.images import load_image
from tagloom.tagger.labels import Labels, read_labels
from tagloom.tagger.registry import DEFAULT_MODEL, KNOWN_MODELS, known_model_names, resolve_model
from tagloom.tagger.result import TagResult, interpret
from tagloom.tagger.runtime import EngineOptions, open_engine
from tagloom.tagger.thresholds import Thresholds, mcut_threshold, read_threshold_json

__all__ = [
    "Tagger", "load_tagger", "FormatOptions", "join_tags", "load_image", "Labels", "read_labels",
    "DEFAULT_MODEL", "KNOWN_MODELS", "known_model_names", "resolve_model", "TagResult", "interpret",
    "Thresholds", "mcut_threshold", "read_threshold_json",
    "ModelBundle", "open_bundle", "FAMILIES", "ModelFamily", "family_of_dir", "get_family", "EngineOptions",
    "open_engine",
]
