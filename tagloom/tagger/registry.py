"""Tagger models by name: known Hugging Face repos, local model folders, first-use download.

A name resolves, in order, to:
1. an existing directory path (our trainer's output, a folder the user downloaded);
2. a known model (repo id such as ``SmilingWolf/wd-eva02-large-tagger-v3``, or its short name
   ``wd-eva02-large-tagger-v3``, or ``joytag``): the copy already in a models folder
   (``<models>/<short name>/``) if it holds the files the backend needs, else downloaded there with
   huggingface_hub (only the files that backend needs; offline use afterwards);
3. a folder of that name inside a models folder (``models/tagloom/my-tagger``).

The only network access is ``_hub_download`` (tests replace it to prove the download path without a
network). TAGLOOM_HF_OFFLINE=1 (setting ``hf_offline``) forbids it.
"""

from __future__ import annotations

import os
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path

from tagloom import names
from tagloom import config
from tagloom.errors import InputFileError, TagLoomError
# What a folder needs per backend and how a folder's family is told are the family records
# (tagloom.tagger.families); WD_FILES, JOYTAG_FILES and family_of_dir stay importable here.
from tagloom.tagger.families import JOYTAG, JOYTAG_FILES, WD_FILES, WD_V3, family_of_dir, get_family  # noqa: F401
from tagloom.tagger.thresholds import Thresholds

BACKENDS = names.BACKENDS


@dataclass(frozen=True)
class ModelSpec:
    repo_id: str
    family: str  # a key of tagloom.tagger.families.FAMILIES: "wd" | "joytag" | "tagloom"
    files: dict = field(default_factory=dict)  # backend -> required files
    optional: tuple = ("threshold.json",)
    aliases: tuple = ()
    revision: str | None = None
    thresholds: Thresholds | None = None  # the model's own defaults when it ships no threshold.json

    @property
    def short_name(self) -> str:
        return self.repo_id.split("/")[-1]


def _wd(repo: str, *aliases: str) -> ModelSpec:
    return ModelSpec(repo, WD_V3.name, WD_V3.files, aliases=aliases)


KNOWN_MODELS: tuple[ModelSpec, ...] = (
    _wd("SmilingWolf/wd-eva02-large-tagger-v3", "eva02", "eva02-large"),
    _wd("SmilingWolf/wd-vit-large-tagger-v3", "vit-large"),
    _wd("SmilingWolf/wd-vit-tagger-v3", "vit"),
    _wd("SmilingWolf/wd-swinv2-tagger-v3", "swinv2"),
    _wd("SmilingWolf/wd-convnext-tagger-v3", "convnext"),
    # JoyTag's weights live in the fancyfeast/joytag repo on the hub (code: github.com/fpgaminer/joytag).
    # Its own model code is not timm, so only its model.onnx (NCHW, logits) is used. Reference threshold 0.4.
    ModelSpec("fancyfeast/joytag", JOYTAG.name, JOYTAG.files, optional=(), aliases=("joytag", "fpgaminer/joytag"),
              thresholds=JOYTAG.thresholds),
)
DEFAULT_MODEL = KNOWN_MODELS[0].repo_id


def known_model_names() -> list[str]:
    return [m.repo_id for m in KNOWN_MODELS]


def find_spec(name: str) -> ModelSpec | None:
    key = name.strip().lower()
    for spec in KNOWN_MODELS:
        if key in (spec.repo_id.lower(), spec.short_name.lower(), *(a.lower() for a in spec.aliases)):
            return spec
    return None


def _onnxruntime_available() -> bool:
    import importlib.util

    return importlib.util.find_spec("onnxruntime") is not None


def _torch_available() -> bool:
    import importlib.util

    return importlib.util.find_spec("torch") is not None and importlib.util.find_spec("timm") is not None


def backend_for_dir(model_dir: Path, backend: str) -> str:
    """The backend to use for a folder that exists: 'auto' prefers ONNX when model.onnx is there."""
    has_onnx = (model_dir / "model.onnx").is_file()
    has_torch = (model_dir / "model.safetensors").is_file() and (model_dir / "config.json").is_file()
    if backend == "onnx":
        if not has_onnx:
            raise InputFileError(model_dir / "model.onnx", "missing: the model folder has no ONNX weights (use --backend torch?)")
        return "onnx"
    family = get_family(family_of_dir(model_dir))
    if backend == "torch":
        if "torch" not in family.backends:
            raise TagLoomError(f"{model_dir}: {family.description} runs on the ONNX backend only")
        if not has_torch:
            missing = "model.safetensors" if not (model_dir / "model.safetensors").is_file() else "config.json"
            raise InputFileError(model_dir / missing, "missing: the torch backend needs config.json and model.safetensors")
        return "torch"
    if "torch" not in family.backends:
        if not has_onnx:
            raise InputFileError(model_dir / "model.onnx", f"missing: {family.description} runs from its model.onnx")
        return "onnx"
    if has_onnx and (_onnxruntime_available() or not has_torch):
        return "onnx"
    if has_torch:
        return "torch"
    raise InputFileError(model_dir, "has no weights: expected model.onnx, or model.safetensors with config.json")


def backend_usable(folder: Path, backend: str) -> bool:
    try:
        backend_for_dir(folder, backend)
        return True
    except TagLoomError:
        return False


def _has_files(folder: Path, files) -> bool:
    return all((folder / f).is_file() for f in files)


def _hub_download(repo_id: str, filename: str, local_dir: Path, revision: str | None = None) -> str:
    """The one network call of the tagger: one file of a hub repo into ``local_dir``.

    huggingface_hub writes to a temporary name and resumes interrupted downloads, so a cancelled
    first run leaves nothing half-written under the final name.
    """
    from huggingface_hub import hf_hub_download

    return hf_hub_download(repo_id=repo_id, filename=filename, local_dir=str(local_dir), revision=revision)


def _offline() -> bool:
    return bool(config.setting("hf_offline"))


def download_model(spec: ModelSpec, backend: str, target: Path) -> Path:
    """Fetch the files ``backend`` needs (plus optional ones that exist) into ``target``."""
    if backend == "auto":
        backend = "onnx" if "onnx" in spec.files and (_onnxruntime_available() or not _torch_available()) else "torch"
    if backend not in spec.files:
        raise TagLoomError(f"{spec.repo_id} has no {backend} weights (available: {', '.join(spec.files)})")
    if _offline():
        raise TagLoomError(f"{spec.repo_id} is not in {target} and offline mode is on (hf_offline); "
                           f"copy {', '.join(spec.files[backend])} there or turn offline mode off")
    target.mkdir(parents=True, exist_ok=True)
    for name in spec.files[backend]:
        if (target / name).is_file():
            continue
        try:
            _hub_download(spec.repo_id, name, target, spec.revision)
        except Exception as e:
            raise TagLoomError(
                f"could not download {name} of {spec.repo_id} into {target}: {type(e).__name__}: {e}. "
                f"Without a network, put {', '.join(spec.files[backend])} from https://huggingface.co/{spec.repo_id} in that folder."
            ) from e
    for name in spec.optional:
        if (target / name).is_file():
            continue
        try:
            _hub_download(spec.repo_id, name, target, spec.revision)
        except Exception:  # optional: most repos have no threshold.json
            pass
    # hf_hub_download keeps bookkeeping in <local_dir>/.cache; it is harmless but not the user's model.
    shutil.rmtree(target / ".cache", ignore_errors=True)
    return target


@dataclass
class ResolvedModel:
    path: Path
    backend: str
    family: str
    spec: ModelSpec | None = None


def resolve_model(name_or_dir: str | os.PathLike | None = None, backend: str = "auto") -> ResolvedModel:
    """Find (or download) a model and decide the backend. Raises TagLoomError with guidance."""
    backend = (backend or "auto").lower()
    if backend not in BACKENDS:
        raise TagLoomError(f"backend must be auto, onnx or torch, got {backend!r}")
    name = str(name_or_dir or config.setting("tagger_model") or DEFAULT_MODEL).strip()
    path = Path(name).expanduser()
    if path.is_dir():
        return ResolvedModel(path, backend_for_dir(path, backend), family_of_dir(path))
    spec = find_spec(name)
    if spec is not None:
        if backend == "torch" and "torch" not in spec.files:
            raise TagLoomError(f"{spec.repo_id} runs on the ONNX backend only")
        for folder in config.model_search_dirs():
            local = folder / spec.short_name
            wanted = [spec.files[b] for b in (["onnx", "torch"] if backend == "auto" else [backend]) if b in spec.files]
            if local.is_dir() and any(_has_files(local, files) for files in wanted):
                return ResolvedModel(local, backend_for_dir(local, backend), spec.family, spec)
        target = config.models_dir() / spec.short_name
        download_model(spec, backend, target)
        return ResolvedModel(target, backend_for_dir(target, backend), spec.family, spec)
    for folder in config.model_search_dirs():
        local = folder / name
        if local.is_dir():
            return ResolvedModel(local, backend_for_dir(local, backend), family_of_dir(local))
    if re.fullmatch(r"[A-Za-z0-9][\w.-]*/[\w.-]+", name) and not name.startswith("."):
        # Any other hub repo id: assumed to be in the wd-v3 layout (e.g. a fine-tune of one).
        spec = ModelSpec(name, WD_V3.name, WD_V3.files)
        target = config.models_dir() / spec.short_name
        if target.is_dir() and backend_usable(target, backend):
            return ResolvedModel(target, backend_for_dir(target, backend), family_of_dir(target), spec)
        download_model(spec, backend, target)
        return ResolvedModel(target, backend_for_dir(target, backend), WD_V3.name, spec)
    if path.suffix or os.sep in name or name.startswith("."):
        raise InputFileError(path, "is not a model folder (no such directory)")
    raise TagLoomError(
        f"unknown tagger model {name!r}: use a folder path, a folder in {config.models_dir()}, or one of "
        + ", ".join(known_model_names())
    )


def list_local_models() -> list[str]:
    """Folder names in the models folders that look like tagger models (for the loader node)."""
    out = []
    for folder in config.model_search_dirs():
        if not folder.is_dir():
            continue
        for sub in sorted(folder.iterdir()):
            if sub.is_dir() and ((sub / "model.onnx").is_file() or (sub / "model.safetensors").is_file()):
                out.append(sub.name)
    return out


def model_choices() -> list[str]:
    """The model names a UI offers: the known repos, then local folders that are not one of them.

    Never raises: a node's choices are read while ComfyUI builds /object_info, and one unreadable
    models folder must not break the whole page.
    """
    known_short = {m.short_name for m in KNOWN_MODELS}
    try:
        local = [n for n in list_local_models() if n not in known_short]
    except Exception:
        local = []
    return known_model_names() + local
