"""Image decoding shared by dataset validation and the trainers (Pillow, no TensorFlow).

Decoding is the one image path of inference (``tagloom.images``): EXIF orientation applied, 16-bit
scaled by /257, palette/CMYK/greyscale converted, the first frame of animated files, the same
scoped pixel limit (PIL's global limit is never changed for good) and the same clear errors.
``load_rgb`` flattens transparency onto white (as the wd taggers were trained); trainers that pad
to a square use ``tagloom.images.load_square`` and put their augmentation on top.
"""

from __future__ import annotations

import hashlib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Callable, Iterable, TypeVar

from tagloom import images as _images
from tagloom.errors import InputFileError
from tagloom.images import MAX_PIXELS, DRAFT_MIN_SIDE  # noqa: F401 - the limit is inference's (TAGLOOM_MAX_IMAGE_PIXELS)

T = TypeVar("T")
R = TypeVar("R")


def load_rgb(path, name: str | None = None, max_side_hint: int = DRAFT_MIN_SIDE):
    """The image (a path or a binary file object) as an 8-bit RGB PIL image; InputFileError naming
    the file (or ``name``) when it cannot be read."""
    try:
        return _images.load_rgb(path, name=name, max_side_hint=max_side_hint)
    except InputFileError:
        raise
    except Exception as e:  # noqa: BLE001 - a dataset scan reports every bad file and goes on
        raise InputFileError(name or path, f"cannot be decoded as an image: {type(e).__name__}: {e}") from e


def file_digest(path: Path) -> str:
    h = hashlib.sha1()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def parallel_map(fn: Callable[[T], R], items: Iterable[T], workers: int | None = None) -> list[R]:
    """``fn`` over ``items`` on a thread pool (Pillow and hashlib release the GIL while decoding)."""
    import os

    items = list(items)
    workers = workers or min(8, (os.cpu_count() or 2))
    if workers <= 1 or len(items) <= 1:
        return [fn(x) for x in items]
    with ThreadPoolExecutor(max_workers=workers) as pool:
        return list(pool.map(fn, items))
