"""Image -> model input, exactly as each model family's reference does it (PIL + numpy only).

wd-v3 (SmilingWolf's reference tagger): alpha composited on white, centred on a white square of the
long side, bicubic resize to the model's size (skipped when already that size), float32 0..255,
RGB -> BGR, HWC. The batch is NHWC.

JoyTag (fpgaminer/joytag's reference): centred on a white square, bicubic resize (skipped when
already that size), 0..1, normalised with CLIP's mean/std, RGB, CHW. The batch is NCHW. The
reference drops alpha with ``convert("RGB")`` (transparent pixels keep whatever colour they store,
often black); we composite on white as for wd-v3, which is identical for opaque images and what
users expect for transparent ones.

The steps are data in the family records (tagloom.tagger.families); these functions are their
old names. tests/test_tagger_preprocess.py checks both against a plain re-statement of the
reference steps.
"""

from __future__ import annotations

import numpy as np

# The shared geometry (composite on white, centred white square, bicubic resize) lives in the one
# image path, tagloom.images, which the trainers use too; re-exported here under the old names.
from tagloom.images import composite_on_white, pad_square_white, square_resized  # noqa: F401

from tagloom.tagger.families import CLIP_MEAN, CLIP_STD, FAMILIES, JOYTAG, WD_V3  # noqa: F401,E402


def wd_preprocess(img, size: int) -> np.ndarray:
    """wd-v3 input for one image: (size, size, 3) float32, BGR, 0..255 (the family record's steps)."""
    return WD_V3.preprocess(img, size)


def joytag_preprocess(img, size: int) -> np.ndarray:
    """JoyTag input for one image: (3, size, size) float32, RGB, CLIP-normalised (the record's steps)."""
    return JOYTAG.preprocess(img, size)


# Family name -> preprocessing (the records themselves: tagloom.tagger.families).
PREPROCESSORS = {name: family.preprocess for name, family in FAMILIES.items()}


def comfy_image_to_pil(image) -> list:
    """ComfyUI IMAGE (torch float B,H,W,C in 0..1, C = 3 or 4) -> list of PIL images.

    Values are rounded to the nearest 8-bit level (LoadImage stores k/255 in float32; truncating
    255*x as SaveImage does would turn some k into k-1), so tagging an image loaded in ComfyUI sees
    exactly the pixels of the file.
    """
    from PIL import Image

    arr = image.detach().cpu().float().numpy() if hasattr(image, "detach") else np.asarray(image, np.float32)
    if arr.ndim == 3:
        arr = arr[None]
    out = []
    for frame in arr:
        u8 = np.clip(np.rint(frame * 255.0), 0, 255).astype(np.uint8)
        if u8.shape[-1] == 1:
            u8 = np.repeat(u8, 3, axis=-1)
        out.append(Image.fromarray(u8, "RGBA" if u8.shape[-1] == 4 else "RGB"))
    return out
