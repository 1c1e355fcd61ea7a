"""Which images a caption job covers, where each caption goes, and how it is written safely.

No image decoding and no model here: only paths and atomic file writes.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from tagloom.errors import InputFileError

def _read_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


_UMASK = _read_umask()  # read once at import, before any worker thread exists

# What PIL reads and dataset folders hold. Caption files (.txt/.json) and everything else are ignored.
IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".jfif", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff", ".avif"})
JPEG_EXTENSIONS = frozenset({".jpg", ".jpeg", ".jfif"})

# Folders that hold tool state, not training images (kohya's cache, ours, VCS, macOS junk).
_SKIP_DIRS = {".git", ".svn", "__pycache__", ".tagloom", "@eaDir"}


def list_images(root: Path, recursive: bool = False) -> list[Path]:
    """Image files under root, sorted so that every run (and every resume) sees the same order."""
    root = Path(root)
    if not root.exists():
        raise InputFileError(root, "no such folder")
    if not root.is_dir():
        raise InputFileError(root, "is not a folder (tagloom caption takes a folder of images)")
    found: list[Path] = []
    if recursive:
        for dirpath, dirnames, filenames in os.walk(root):
            dirnames[:] = sorted(d for d in dirnames if d not in _SKIP_DIRS and not d.startswith("."))
            for name in filenames:
                if Path(name).suffix.lower() in IMAGE_EXTENSIONS and not name.startswith("."):
                    found.append(Path(dirpath) / name)
    else:
        for entry in root.iterdir():
            if entry.is_file() and entry.suffix.lower() in IMAGE_EXTENSIONS and not entry.name.startswith("."):
                found.append(entry)
    return sorted(found)


def caption_path(image: Path, fmt: str) -> Path:
    """The caption file beside an image: kohya's convention, same stem, .txt (or .json)."""
    return Path(image).with_suffix("." + fmt)


def duplicate_stems(images: list[Path], fmt: str) -> dict[Path, Path]:
    """Images whose caption file would collide with an earlier image's (a.jpg and a.png -> a.txt).

    Returns {later image: the earlier image that owns the caption path}; the job reports the later
    ones as failed rather than letting one caption silently overwrite the other.
    """
    owner: dict[Path, Path] = {}
    clashes: dict[Path, Path] = {}
    for image in images:
        key = caption_path(image, fmt)
        if key in owner:
            clashes[image] = owner[key]
        else:
            owner[key] = image
    return clashes


def atomic_write_text(path: Path, text: str) -> None:
    """Write a whole file or nothing: a killed run never leaves a half-written caption behind.

    The text goes to a temporary file in the same folder (same file system), is flushed to disk and
    then renamed over the target, which is atomic on POSIX and on Windows (os.replace).
    """
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="\n") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        # mkstemp makes the file private (0600); a caption gets the permissions any new file gets.
        try:
            os.chmod(tmp, 0o666 & ~_UMASK)
        except OSError:
            pass
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


def relative_name(image: Path, root: Path) -> str:
    """The image's path relative to the job's folder, with '/' on every OS (JSONL keys)."""
    return Path(image).relative_to(root).as_posix()
