"""Safe image loading for the taggers: kept as the names' old home. The one image path (decode,
EXIF orientation, 16-bit, alpha, pixel limit, square resize) lives in ``tagloom.images``, shared by
tagging, captioning and training; everything here is that module's."""

from __future__ import annotations

from tagloom.images import (  # noqa: F401 - re-exported public names
    DRAFT_MIN_SIDE,
    IMAGE_EXTENSIONS,
    MAX_PIXELS,
    _bomb_lock,
    _open_unchecked,
    _to_8bit,
    draft_hint,
    ensure_rgba_or_rgb,
    image_size,
    is_image_path,
    load_image,
    load_rgb,
    load_square,
    max_pixels,
    pixel_limit_lifted,
)
