"""Which folders a caption job started from ComfyUI may touch.

The ComfyUI node writes a file beside every image of a folder named in a workflow, and workflows are
shared: a workflow from someone else must not be able to make ComfyUI read or write arbitrary
folders of this machine. So the node accepts only folders inside

- ComfyUI's input folder (relative paths are taken relative to it: `my_dataset` = input/my_dataset),
- ComfyUI's output folder,
- the roots the user lists in the `caption_roots` setting (TAGLOOM_CAPTION_ROOTS, os.pathsep-
  separated, or `caption_roots = ["/data/datasets"]` in config.toml), for datasets kept elsewhere.

Paths are compared after resolving symlinks and `..`, so a link inside input/ that points outside
is refused too. The CLI has no such limit: its user names the folder on their own command line.
"""

from __future__ import annotations

import os
from pathlib import Path

from tagloom.errors import TagLoomError


def allowed_roots() -> list[Path]:
    from tagloom import config

    roots: list[Path] = []
    fp = config._comfy_folder_paths()
    if fp is not None:
        for getter in ("get_input_directory", "get_output_directory"):
            fn = getattr(fp, getter, None)
            if fn is not None:
                roots.append(Path(fn()))
    extra = config.setting("caption_roots")
    if isinstance(extra, str):
        extra = [p for p in extra.split(os.pathsep) if p.strip()]
    for item in extra or []:
        roots.append(Path(str(item).strip()).expanduser())
    return [r.resolve() for r in roots]


def resolve_allowed_folder(folder: str) -> Path:
    """The folder as an absolute path, or TagLoomError saying why it is not allowed."""
    from tagloom import config

    text = (folder or "").strip().strip('"')
    if not text:
        raise TagLoomError("no folder given: name a folder inside ComfyUI's input folder (e.g. my_dataset)")
    roots = allowed_roots()
    path = Path(text).expanduser()
    if not path.is_absolute():
        fp = config._comfy_folder_paths()
        base = Path(fp.get_input_directory()) if fp is not None and hasattr(fp, "get_input_directory") else Path.cwd()
        path = base / path
    real = path.resolve()
    if not any(real == root or root in real.parents for root in roots):
        listed = ", ".join(str(r) for r in roots) or "(none)"
        raise TagLoomError(
            f"{text}: folder not allowed. The caption node only works inside ComfyUI's input or output "
            f"folder or a folder listed in the caption_roots setting (TAGLOOM_CAPTION_ROOTS); allowed: {listed}"
        )
    if not real.is_dir():
        raise TagLoomError(f"{text}: no such folder ({real})")
    return real
