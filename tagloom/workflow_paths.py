"""What a shared workflow may touch on this machine: the one policy for every node that takes a path.

Workflows are shared as JSON and PNG metadata, so a workflow from someone else must not make ComfyUI
read or write arbitrary files. A path that comes from a node input is accepted only inside:

- ComfyUI's input folder (a relative name is taken relative to it: ``my_dataset`` = input/my_dataset),
- ComfyUI's output folder,
- the model folders of its kind (``models/tagloom`` for taggers, ``models/loras`` for LoRAs),
- the user's data folder (``user/tagloom``: tiers files next to the tag database),
- the folders the user lists in the ``workflow_roots`` setting (``caption_roots`` is its older name;
  ``TAGLOOM_WORKFLOW_ROOTS=/data/datasets:/mnt/more`` or ``workflow_roots = [...]`` in config.toml).

Paths are compared after resolving symlinks and ``..``, so a link inside input/ that points outside is
refused too. Where a node writes (the Train node's result, captions) is decided by the node from a
plain name, never by a path in its arguments. The CLI has no such limit: its user names paths on
their own command line.
"""

from __future__ import annotations

import os
from pathlib import Path

from tagloom import config
from tagloom.errors import InputFileError, TagLoomError


def _comfy_dirs() -> list[Path]:
    fp = config._comfy_folder_paths()
    out = []
    if fp is not None:
        for getter in ("get_input_directory", "get_output_directory"):
            fn = getattr(fp, getter, None)
            if fn is not None:
                out.append(Path(fn()))
    return out


def input_dir() -> Path:
    fp = config._comfy_folder_paths()
    if fp is not None and hasattr(fp, "get_input_directory"):
        return Path(fp.get_input_directory())
    return Path.cwd()


def user_roots() -> list[Path]:
    """The folders the user allowed in the ``workflow_roots`` (or older ``caption_roots``) setting."""
    roots: list[Path] = []
    for name in ("workflow_roots", "caption_roots"):
        extra = config.setting(name)
        if isinstance(extra, str):
            extra = [p for p in extra.split(os.pathsep) if p.strip()]
        roots += [Path(str(item).strip()).expanduser() for item in extra or []]
    return roots


def data_roots() -> list[Path]:
    """Where datasets may be: ComfyUI's input and output folders and the user's roots."""
    return [r.resolve() for r in _comfy_dirs() + user_roots()]


def inside(path: Path, roots: list[Path]) -> bool:
    real = path.resolve()
    return any(real == r or r in real.parents for r in (r.resolve() for r in roots))


def _absolute(text: str) -> Path:
    path = Path(text).expanduser()
    return path if path.is_absolute() else input_dir() / path


def data_folder(text: str, what: str = "folder", missing_hint: str = "") -> Path:
    """A dataset folder named by a node input (captions, training); TagLoomError saying why not."""
    text = (text or "").strip().strip('"')
    if not text:
        raise TagLoomError(f"no {what} given: name a folder inside ComfyUI's input folder (e.g. my_dataset)")
    roots = data_roots()
    real = _absolute(text).resolve()
    if not inside(real, roots):
        listed = ", ".join(str(r) for r in roots) or "(none)"
        raise TagLoomError(
            f"{text}: {what} not allowed. Workflows may only use folders inside ComfyUI's input or output "
            f"folder or a folder listed in the workflow_roots setting (TAGLOOM_WORKFLOW_ROOTS); allowed: {listed}"
        )
    if not real.is_dir():
        raise InputFileError(real, f"{what} not found{missing_hint}")
    return real


def model_folder(path: str | Path, roots: list[Path], kind: str) -> Path:
    """A model folder or file that a node input names: only inside ``roots`` (that kind's model folders)."""
    p = Path(path)
    if not inside(p, roots):
        raise InputFileError(p, f"is outside {kind} (workflows may only load models from there)")
    return p.resolve()


def find_file(name: str, search_dirs, what: str = "file") -> Path:
    """A file named by a node input: a name relative to one of ``search_dirs``, or an absolute path
    inside one of them; anything else is refused rather than read."""
    dirs = [Path(d).resolve() for d in search_dirs if d]
    raw = Path(name.strip()).expanduser()
    candidates = [raw] if raw.is_absolute() else [d / raw for d in dirs]
    for cand in candidates:
        real = cand.resolve()
        if not any(real == d or d in real.parents for d in dirs):
            if raw.is_absolute():
                raise TagLoomError(f"{what} {name!r} is outside the allowed folders ({', '.join(map(str, dirs))})")
            continue
        if real.is_file():
            return real
    raise InputFileError(raw, "not found (looked in " + ", ".join(map(str, dirs)) + ")")


def settings_file(name: str, what: str = "file") -> Path:
    """A settings file a node names (a tiers file): in the user's TagLoom data folder, ComfyUI's
    input folder or the user's roots."""
    return find_file(name, [config.data_dir(), *_comfy_dirs()[:1], *user_roots()], what)
