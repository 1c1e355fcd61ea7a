"""Image decoding shared by dataset validation and the trainers (Pillow, no TensorFlow).

``load_rgb`` flattens transparency onto white (as the wd taggers were trained) and converts
palette, CMYK, 16-bit and greyscale images to 8-bit RGB; animated files use their first frame.
"""

from __future__ import annotations

import hashlib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Callable, Iterable, TypeVar

from tagloom.errors import InputFileError

MAX_PIXELS = 16384 * 16384  # refuse decompression bombs beyond this, with a clear error

T = TypeVar("T")
R = TypeVar("R")


def load_rgb(path, name: str | None = None):
    """The image (a path or a binary file object) as an 8-bit RGB PIL image; InputFileError naming
    the file (or ``name``) when it cannot be read."""
    from PIL import Image

    Image.MAX_IMAGE_PIXELS = MAX_PIXELS
    try:
        with Image.open(path) as im:
            im.seek(0)
            im.load()
            if im.mode in ("I;16", "I;16B", "I;16L", "I"):
                im = im.point(lambda v: v / 256).convert("L")
            if im.mode in ("RGBA", "LA", "P", "PA") or "transparency" in im.info:
                im = im.convert("RGBA")
                bg = Image.new("RGBA", im.size, (255, 255, 255, 255))
                bg.alpha_composite(im)
                im = bg
            return im.convert("RGB")
    except InputFileError:
        raise
    except Exception as e:  # PIL raises many types (OSError, SyntaxError, DecompressionBombError...)
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
