"""Safe image loading for the taggers: any file a user drops in becomes an 8-bit RGB or RGBA PIL
image, or an InputFileError that names the file and the problem.

What is handled and how (docs/tagger.md repeats this for users):
- unreadable / not an image / truncated          -> InputFileError (a truncated JPEG is an error,
  not a silently grey half-image: a batch job reports it and moves on)
- CMYK, YCbCr, L, LA, 1-bit                       -> converted to RGB / RGBA
- palette (P) with transparency                   -> RGBA (the transparency is kept for compositing)
- 16-bit greyscale PNG (I;16*) and 32-bit I / F   -> scaled to 8 bits (PIL's own convert would clip
  everything above 255 to white)
- animated GIF / WebP / APNG                      -> the first frame
- EXIF orientation                                -> applied (users expect the picture upright)
- huge images: a JPEG above ``max_pixels`` is decoded reduced with PIL's draft mode (DCT scaling,
  cheap and memory-safe); any other format above ``max_pixels`` is refused with a clear error, since
  decoding it would need width*height*4 bytes. The limit defaults to MAX_PIXELS (PIL's own
  decompression-bomb limit, ~179 MP) and can be changed with TAGLOOM_MAX_IMAGE_PIXELS.
"""

from __future__ import annotations

import threading
import warnings
from pathlib import Path

import numpy as np

from tagloom.errors import InputFileError

# PIL refuses images above 2 * MAX_IMAGE_PIXELS (~179 MP) as decompression bombs; we use the same
# number as our documented limit so we never hit PIL's error, only our clearer one.
MAX_PIXELS = 178_956_970
# A reduced JPEG keeps at least this many pixels on its long side (taggers use 448).
DRAFT_MIN_SIDE = 1024

_bomb_lock = threading.Lock()


def max_pixels() -> int:
    """Setting ``max_image_pixels`` (env TAGLOOM_MAX_IMAGE_PIXELS or config.toml), else MAX_PIXELS."""
    from tagloom import config

    value = config.setting("max_image_pixels")
    if value not in (None, ""):
        try:
            return int(float(value))
        except (TypeError, ValueError):
            pass
    return MAX_PIXELS


def _open_unchecked(path: Path):
    """Image.open without PIL's decompression-bomb check (we do our own, with a clearer message).

    The check reads a module global, so we lift it only for the instant of the header read, under a
    lock; Image.open does not decode pixels, so this costs nothing.
    """
    from PIL import Image

    with _bomb_lock:
        saved = Image.MAX_IMAGE_PIXELS
        Image.MAX_IMAGE_PIXELS = None
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", Image.DecompressionBombWarning)
                return Image.open(path)
        finally:
            Image.MAX_IMAGE_PIXELS = saved


def _to_8bit(img, path: Path):
    """Any PIL mode -> 'RGB' or 'RGBA' (8 bits per channel)."""
    from PIL import Image

    mode = img.mode
    if mode in ("RGB", "RGBA"):
        return img
    if mode.startswith("I;16") or mode in ("I", "F"):
        arr = np.asarray(img)
        if mode == "F":
            peak = float(np.nanmax(arr)) if arr.size else 0.0
            arr = np.nan_to_num(arr) * (255.0 if peak <= 1.0 else 1.0)
        elif mode.startswith("I;16") or (arr.size and arr.max() > 255):
            arr = arr.astype(np.float64) / 257.0  # 0..65535 -> 0..255
        arr = np.clip(np.rint(arr), 0, 255).astype(np.uint8)
        return Image.fromarray(arr, "L").convert("RGB")
    if mode == "P":
        return img.convert("RGBA") if "transparency" in img.info else img.convert("RGB")
    if mode in ("LA", "La", "PA", "RGBa"):
        return img.convert("RGBA")
    if mode == "CMYK":
        return img.convert("RGB")
    try:
        return img.convert("RGB")
    except (ValueError, OSError) as e:
        raise InputFileError(path, f"has an image mode TagLoom cannot convert ({mode}): {e}") from e


def load_image(path, max_side_hint: int = DRAFT_MIN_SIDE):
    """Open an image file as an 8-bit RGB or RGBA PIL image (first frame, EXIF orientation applied).

    ``max_side_hint``: the smallest long side a huge JPEG may be reduced to (draft mode).
    """
    from PIL import Image, ImageOps, UnidentifiedImageError

    path = Path(path)
    if not path.exists():
        raise InputFileError(path, "does not exist")
    if not path.is_file():
        raise InputFileError(path, "is not a file")
    try:
        src = img = _open_unchecked(path)
    except UnidentifiedImageError as e:
        raise InputFileError(path, "is not an image PIL can read (unknown or corrupt format)") from e
    except OSError as e:
        raise InputFileError(path, f"cannot be opened: {e}") from e
    try:
        w, h = img.size
        limit = max_pixels()
        if w * h > limit:
            if img.format == "JPEG":
                # DCT scaling: the decoder produces at most 1/8 of the pixels, never the full image.
                img.draft("RGB", (max(max_side_hint, 1), max(max_side_hint, 1)))
            else:
                raise InputFileError(
                    path,
                    f"is {w}x{h} = {w * h / 1e6:.0f} megapixels, above the {limit / 1e6:.0f} MP limit for "
                    f"{img.format or 'this'} images (decoding it would need about {w * h * 4 / 2**30:.1f} GiB); "
                    "shrink it first or raise TAGLOOM_MAX_IMAGE_PIXELS",
                )
        if getattr(img, "is_animated", False):
            img.seek(0)
        try:
            img.load()
        except OSError as e:
            msg = str(e)
            if "truncated" in msg or "broken data stream" in msg or "premature" in msg.lower():
                raise InputFileError(path, f"is truncated or corrupt ({msg})") from e
            raise InputFileError(path, f"cannot be decoded: {msg}") from e
        except (ValueError, SyntaxError) as e:
            raise InputFileError(path, f"cannot be decoded: {e}") from e
        try:
            img = ImageOps.exif_transpose(img)
        except Exception:  # a broken EXIF block is no reason to refuse the picture
            pass
        out = _to_8bit(img, path)
        if out is src:
            out = src.copy()  # detach from the file (frames, lazy data) before we close it
        return out
    except Image.DecompressionBombError as e:  # should not happen after our check, but never crash
        raise InputFileError(path, f"is too large to decode safely: {e}") from e
    finally:
        try:
            src.close()
        except Exception:
            pass


def ensure_rgba_or_rgb(img):
    """An in-memory PIL image in any mode -> RGB/RGBA (for callers that hold images, not files)."""
    return _to_8bit(img, Path(getattr(img, "filename", "") or "<image>"))


IMAGE_EXTENSIONS = {".png", ".jpg", ".jpeg", ".webp", ".gif", ".bmp", ".tif", ".tiff", ".jfif", ".avif"}


def is_image_path(path) -> bool:
    return Path(path).suffix.lower() in IMAGE_EXTENSIONS
