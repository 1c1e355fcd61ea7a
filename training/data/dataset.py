"""Reading a dataset folder: images with same-named ``.txt`` (or ``.caption``) files of
comma-separated tags, sub-folders allowed, kohya ``N_name`` folders meaning "repeat N times".

Only file discovery and caption parsing live here; decoding is in ``tagloom.training.data.images``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

from tagloom.errors import InputFileError

IMAGE_EXTS = {".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif", ".tif", ".tiff"}
CAPTION_EXTS = (".txt", ".caption")  # .txt first: ours; .caption is sd-scripts' default
_REPEAT_DIR = re.compile(r"^(\d+)_(.+)$")


@dataclass
class Item:
    path: Path  # the image
    rel: str  # path relative to the dataset root, "/" separated (stable across machines)
    caption_path: Path | None
    caption: str | None  # raw caption text (None when there is no caption file)
    repeats: int = 1
    group: str = ""  # the top-level sub-folder (kohya concept folder), "" for the root
    tags: list[str] = field(default_factory=list)


def split_tags(caption: str) -> list[str]:
    """Comma-separated tags, stripped, empties dropped, order kept (the order matters for keep-N)."""
    return [t.strip() for t in caption.replace("\n", ",").split(",") if t.strip()]


def canonical_tag(tag: str) -> str:
    """A caption tag as a vocabulary name: ``Long hair`` -> ``long_hair``, ``\\(`` -> ``(``.

    Prompt-style captions escape parentheses and use spaces; Danbooru names use underscores.
    Kaomoji such as ``^_^`` and ``:d`` survive unchanged.
    """
    tag = tag.strip().replace("\\(", "(").replace("\\)", ")")
    return tag.lower().replace(" ", "_")


def repeats_for(rel_parts: tuple[str, ...]) -> int:
    """Repeats from the nearest kohya ``N_name`` folder above the image (1 when none)."""
    for part in reversed(rel_parts[:-1]):
        m = _REPEAT_DIR.match(part)
        if m:
            return max(1, int(m.group(1)))
    return 1


def read_caption(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as e:
        raise InputFileError(path, f"caption is not UTF-8 text: {e}") from e


def scan(root: Path) -> list[Item]:
    """Every image under ``root`` (sorted by relative path, so the order is the same everywhere)."""
    root = Path(root)
    if not root.is_dir():
        raise InputFileError(root, "dataset folder not found")
    items: list[Item] = []
    for path in sorted(p for p in root.rglob("*") if p.suffix.lower() in IMAGE_EXTS and p.is_file()):
        relp = path.relative_to(root)
        if any(part.startswith(".") for part in relp.parts):
            continue  # hidden folders (.cache, our own state) are not data
        caption_path = None
        for ext in CAPTION_EXTS:
            candidate = path.with_suffix(ext)
            if candidate.is_file():
                caption_path = candidate
                break
        caption = read_caption(caption_path) if caption_path else None
        items.append(
            Item(
                path=path,
                rel=relp.as_posix(),
                caption_path=caption_path,
                caption=caption,
                repeats=repeats_for(relp.parts),
                group=relp.parts[0] if len(relp.parts) > 1 else "",
                tags=split_tags(caption) if caption else [],
            )
        )
    return items
