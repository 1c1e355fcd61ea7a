"""The one image path: a file (or bytes) a user drops in -> the pixels a model sees, the same for
tagging, captioning and training.

Two layers, like timm's transforms factory (one set of steps, eval and train built from it):

1. Decoding (``load_image``): any file becomes an 8-bit RGB or RGBA PIL image, or an InputFileError
   that names the file and the problem.
2. Geometry (``square_resized``): alpha composited on white, centred on a white square of the long
   side, bicubic resize to the model's size. ``load_square`` is both together: the inference input
   before its float conversion, and the training input before augmentation (training's augmentation
   sits on top of it in ``training/``).

What decoding handles and how (docs/tagger.md repeats this for users):
- unreadable / not an image / truncated          -> InputFileError (a truncated JPEG is an error,
  not a silently grey half-image: a batch job reports it and moves on)
- CMYK, YCbCr, L, LA, 1-bit                       -> converted to RGB / RGBA
- palette (P), L or RGB with a transparency key   -> RGBA (the transparency is kept for compositing)
- 16-bit greyscale PNG (I;16*) and 32-bit I / F   -> scaled to 8 bits by v / 257, rounded: the exact
  inverse of the usual 8 -> 16 bit expansion (k -> k * 257, 0xAB -> 0xABAB), so 0 -> 0,
  65535 -> 255 and every expanded 8-bit level comes back unchanged (PIL's own convert would clip
  everything above 255 to white; / 256 would be off by one level near the top)
- animated GIF / WebP / APNG                      -> the first frame
- EXIF orientation                                -> applied (users expect the picture upright, and
  a model trained on sideways phone photos learns them sideways)
- huge images: a JPEG above ``max_pixels`` is decoded reduced with PIL's draft mode (DCT scaling,
  cheap and memory-safe); any other format above ``max_pixels`` is refused with a clear error, since
  decoding it would need width*height*4 bytes. The limit defaults to MAX_PIXELS (PIL's own
  decompression-bomb limit, ~179 MP) and can be changed with TAGLOOM_MAX_IMAGE_PIXELS. PIL's global
  limit is never changed for good: it is lifted only for the instant of the header read, under a lock.
"""

from __future__ import annotations

import contextlib
import io
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
# Transparent pixels are composited on this colour, and squares are padded with it (the wd taggers
# were trained this way).
BACKGROUND = (255, 255, 255)

IMAGE_EXTENSIONS = {".png", ".jpg", ".jpeg", ".webp", ".gif", ".bmp", ".tif", ".tiff", ".jfif", ".avif"}

_bomb_lock = threading.Lock()


def is_image_path(path) -> bool:
    return Path(path).suffix.lower() in IMAGE_EXTENSIONS


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


def draft_hint(size: int) -> int:
    """The smallest long side a huge JPEG may be reduced to when the model's input is ``size``
    (twice the input, at least DRAFT_MIN_SIDE): every caller that makes ``size`` pixels uses it, so
    a huge JPEG decodes identically for tagging, captioning and training."""
    return max(int(size) * 2, DRAFT_MIN_SIDE)


@contextlib.contextmanager
def pixel_limit_lifted():
    """PIL's decompression-bomb check off for the duration, under a lock, then put back as it was.

    The check reads a module global, so lift it only around ``Image.open`` (a header read, no pixels
    are decoded): we do our own check with a clearer message right after.
    """
    from PIL import Image

    with _bomb_lock:
        saved = Image.MAX_IMAGE_PIXELS
        Image.MAX_IMAGE_PIXELS = None
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", Image.DecompressionBombWarning)
                yield
        finally:
            Image.MAX_IMAGE_PIXELS = saved


def _open_unchecked(source):
    """Image.open without PIL's decompression-bomb check (see pixel_limit_lifted)."""
    from PIL import Image

    with pixel_limit_lifted():
        return Image.open(source)


def _source_name(source, name) -> str | Path:
    if name:
        return name
    if isinstance(source, (str, Path)):
        return Path(source)
    return getattr(source, "name", None) or "<image bytes>"


def _open(source, name):
    """(opened PIL image, display name); InputFileError for a missing file or a non-image."""
    from PIL import UnidentifiedImageError

    label = _source_name(source, name)
    if isinstance(source, (str, Path)):
        path = Path(source)
        if not path.exists():
            raise InputFileError(label, "does not exist")
        if not path.is_file():
            raise InputFileError(label, "is not a file")
        source = path
    elif isinstance(source, (bytes, bytearray, memoryview)):
        source = io.BytesIO(bytes(source))
    try:
        return _open_unchecked(source), label
    except UnidentifiedImageError as e:
        raise InputFileError(label, "is not an image PIL can read (unknown or corrupt format)") from e
    except OSError as e:
        raise InputFileError(label, f"cannot be opened: {e}") from e


def _to_8bit(img, path):
    """Any PIL mode -> 'RGB' or 'RGBA' (8 bits per channel)."""
    from PIL import Image

    mode = img.mode
    if mode == "RGBA":
        return img
    if mode == "RGB":
        # An RGB PNG's tRNS colour key: that colour is transparent (composited like any alpha).
        return img.convert("RGBA") if "transparency" in img.info else img
    if mode.startswith("I;16") or mode in ("I", "F"):
        arr = np.asarray(img)
        if mode == "F":
            peak = float(np.nanmax(arr)) if arr.size else 0.0
            arr = np.nan_to_num(arr) * (255.0 if peak <= 1.0 else 1.0)
        elif mode.startswith("I;16") or (arr.size and arr.max() > 255):
            arr = arr.astype(np.float64) / 257.0  # 0..65535 -> 0..255, the inverse of k * 257
        arr = np.clip(np.rint(arr), 0, 255).astype(np.uint8)
        return Image.fromarray(arr, "L").convert("RGB")
    if mode in ("P", "L", "1"):
        return img.convert("RGBA") if "transparency" in img.info else img.convert("RGB")
    if mode in ("LA", "La", "PA", "RGBa"):
        return img.convert("RGBA")
    if mode == "CMYK":
        return img.convert("RGB")
    try:
        return img.convert("RGB")
    except (ValueError, OSError) as e:
        raise InputFileError(path, f"has an image mode TagLoom cannot convert ({mode}): {e}") from e


def load_image(source, max_side_hint: int = DRAFT_MIN_SIDE, name=None):
    """Open an image as an 8-bit RGB or RGBA PIL image (first frame, EXIF orientation applied).

    ``source``: a path, bytes, or a binary file object (a tar shard member). ``name``: how errors
    name it (default: the path, or the file object's name).
    ``max_side_hint``: the smallest long side a huge JPEG may be reduced to (draft mode); callers
    that make a model input of a known size pass ``draft_hint(size)``.
    """
    from PIL import Image, ImageOps

    src, label = _open(source, name)
    img = src
    try:
        w, h = img.size
        limit = max_pixels()
        if w * h > limit:
            if img.format == "JPEG":
                # DCT scaling: the decoder produces at most 1/8 of the pixels, never the full image.
                img.draft("RGB", (max(max_side_hint, 1), max(max_side_hint, 1)))
            else:
                raise InputFileError(
                    label,
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
                raise InputFileError(label, f"is truncated or corrupt ({msg})") from e
            raise InputFileError(label, f"cannot be decoded: {msg}") from e
        except (ValueError, SyntaxError) as e:
            raise InputFileError(label, f"cannot be decoded: {e}") from e
        try:
            img = ImageOps.exif_transpose(img)
        except Exception:  # a broken EXIF block is no reason to refuse the picture
            pass
        out = _to_8bit(img, label)
        if out is src:
            out = src.copy()  # detach from the file (frames, lazy data) before we close it
        return out
    except Image.DecompressionBombError as e:  # should not happen after our check, but never crash
        raise InputFileError(label, f"is too large to decode safely: {e}") from e
    finally:
        try:
            src.close()
        except Exception:
            pass


def image_size(source, name=None) -> tuple[int, int]:
    """(width, height) as ``load_image`` will return it (EXIF orientation applied, before any draft
    reduction), read from the header without decoding the pixels."""
    src, label = _open(source, name)
    try:
        w, h = src.size
        try:
            orientation = src.getexif().get(0x0112, 1)
        except Exception:  # noqa: BLE001 - a broken EXIF block: load_image ignores it too
            orientation = 1
        return (h, w) if orientation in (5, 6, 7, 8) else (w, h)
    finally:
        src.close()


def ensure_rgba_or_rgb(img):
    """An in-memory PIL image in any mode -> RGB/RGBA (for callers that hold images, not files)."""
    return _to_8bit(img, Path(getattr(img, "filename", "") or "<image>"))


# --- geometry ----------------------------------------------------------------------------------

def composite_on_white(img):
    """RGBA (or any mode with alpha) -> RGB over white; RGB passes through."""
    from PIL import Image

    if img.mode == "RGB" and "transparency" not in img.info:
        return img
    if img.mode not in ("RGB", "RGBA"):
        img = ensure_rgba_or_rgb(img)
        if img.mode == "RGB" and "transparency" not in img.info:
            return img
    rgba = img.convert("RGBA")
    canvas = Image.new("RGBA", rgba.size, BACKGROUND + (255,))
    canvas.alpha_composite(rgba)
    return canvas.convert("RGB")


def pad_square_white(img):
    """Centre an RGB image on a white square whose side is the image's long side."""
    from PIL import Image

    w, h = img.size
    side = max(w, h)
    if w == h:
        return img
    square = Image.new("RGB", (side, side), BACKGROUND)
    square.paste(img, ((side - w) // 2, (side - h) // 2))
    return square


def square_resized(img, size: int):
    """Composite on white, pad to a centred white square, bicubic-resize to ``size`` (skipped when
    already that size): the geometry every model family and the trainers share. RGB PIL image."""
    from PIL import Image

    square = pad_square_white(composite_on_white(img))
    if square.size[0] != size:
        square = square.resize((size, size), Image.BICUBIC)
    return square


# --- the whole path ----------------------------------------------------------------------------

def load_rgb(source, name=None, max_side_hint: int = DRAFT_MIN_SIDE):
    """``load_image`` with transparency flattened onto white: 8-bit RGB, original geometry (for
    trainers that crop rather than pad, e.g. the LoRA trainer's buckets)."""
    return composite_on_white(load_image(source, max_side_hint=max_side_hint, name=name))


def load_square(source, size: int, name=None):
    """An image file -> the model's ``size`` x ``size`` RGB PIL input (decode + orientation + 8 bits
    + white composite + square + resize): what inference feeds the model (before the family's float
    conversion) and what training augments."""
    return square_resized(load_image(source, max_side_hint=draft_hint(size), name=name), size)
