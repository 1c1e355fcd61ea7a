"""Progress lines shared by the trainers and the launcher.

A trainer prints ``TAGLOOM_PROGRESS {"step": .., "total": .., "loss": .., ...}`` lines (flushed) on
stdout; the launcher parses them and the ComfyUI node turns them into ProgressBar updates. Only the
main process (rank 0) reports under torchrun/accelerate.
"""

from __future__ import annotations

import json
import os
import sys

PREFIX = "TAGLOOM_PROGRESS "


def is_main_process() -> bool:
    return int(os.environ.get("RANK", "0")) == 0


def report(**fields) -> None:
    if is_main_process():
        sys.stdout.write(PREFIX + json.dumps(fields, default=float) + "\n")
        sys.stdout.flush()


def log(message: str) -> None:
    if is_main_process():
        print(message, flush=True)


def parse(line: str) -> dict | None:
    """The fields of a progress line, None for any other line."""
    if not line.startswith(PREFIX):
        return None
    try:
        value = json.loads(line[len(PREFIX):])
    except ValueError:
        return None
    return value if isinstance(value, dict) else None
