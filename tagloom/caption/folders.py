"""Which folders a caption job started from ComfyUI may touch: the policy of
:mod:`tagloom.workflow_paths` (ComfyUI's input and output folders and the ``workflow_roots`` setting),
kept here under its old names. The CLI has no such limit: its user names the folder on their own
command line.
"""

from __future__ import annotations

from pathlib import Path

from tagloom import workflow_paths


def allowed_roots() -> list[Path]:
    return workflow_paths.data_roots()


def resolve_allowed_folder(folder: str) -> Path:
    """The folder as an absolute path, or TagLoomError saying why it is not allowed."""
    return workflow_paths.data_folder(folder, "folder")
