"""Preprocessing equals each model family's reference, re-stated here step by step as the reference
scripts write it (SmilingWolf's wd-v3 tagger; fpgaminer/joytag's prepare_image), independently of
our implementation."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from tagloom.tagger.preprocess import CLIP_MEAN, CLIP_STD, comfy_image_to_pil, joytag_preprocess, wd_preprocess


def reference_wd(image: Image.Image, target_size: int) -> np.ndarray:
    # 1. alpha onto a white canvas
    image = image.convert("RGBA")
    canvas = Image.new("RGBA", image.size, (255, 255, 255))
    canvas.alpha_composite(image)
    image = canvas.convert("RGB")
    # 2. pad to a white square, image centred
    max_dim = max(image.size)
    pad_left = (max_dim - image.size[0]) // 2
    pad_top = (max_dim - image.size[1]) // 2
    padded = Image.new("RGB", (max_dim, max_dim), (255, 255, 255))
    padded.paste(image, (pad_left, pad_top))
    # 3. bicubic resize when needed
    if max_dim != target_size:
        padded = padded.resize((target_size, target_size), Image.BICUBIC)
    # 4. float32, RGB -> BGR
    arr = np.asarray(padded, dtype=np.float32)
    return arr[:, :, ::-1]


def reference_joytag(image: Image.Image, target_size: int) -> np.ndarray:
    image = image.convert("RGB")  # the reference loads with convert("RGB"); our inputs here are opaque
    max_dim = max(image.size)
    pad_left = (max_dim - image.size[0]) // 2
    pad_top = (max_dim - image.size[1]) // 2
    padded = Image.new("RGB", (max_dim, max_dim), (255, 255, 255))
    padded.paste(image, (pad_left, pad_top))
    if max_dim != target_size:
        padded = padded.resize((target_size, target_size), Image.BICUBIC)
    t = np.asarray(padded, dtype=np.uint8).transpose(2, 0, 1).astype(np.float32) / 255.0  # pil_to_tensor / 255
    mean = np.array(CLIP_MEAN, np.float32)[:, None, None]
    std = np.array(CLIP_STD, np.float32)[:, None, None]
    return (t - mean) / std


def _images():
    rng = np.random.default_rng(3)
    wide = Image.fromarray(rng.integers(0, 255, (37, 91, 3), dtype=np.uint8))
    tall = Image.fromarray(rng.integers(0, 255, (120, 50, 3), dtype=np.uint8))
    exact = Image.fromarray(rng.integers(0, 255, (56, 56, 3), dtype=np.uint8))
    rgba = Image.fromarray(rng.integers(0, 255, (40, 70, 4), dtype=np.uint8), "RGBA")
    return {"wide": wide, "tall": tall, "exact": exact, "rgba": rgba}


@pytest.mark.parametrize("name", ["wide", "tall", "exact", "rgba"])
def test_wd_matches_reference(name):
    img = _images()[name]
    ours = wd_preprocess(img, 56)
    ref = reference_wd(img, 56)
    assert ours.shape == (56, 56, 3) and ours.dtype == np.float32
    np.testing.assert_array_equal(ours, ref)


@pytest.mark.parametrize("name", ["wide", "tall", "exact"])
def test_joytag_matches_reference(name):
    img = _images()[name]
    ours = joytag_preprocess(img, 56)
    ref = reference_joytag(img, 56)
    assert ours.shape == (3, 56, 56) and ours.dtype == np.float32
    np.testing.assert_allclose(ours, ref, rtol=0, atol=1e-6)


def test_wd_transparent_pixels_are_white_and_channels_are_bgr():
    img = Image.new("RGBA", (4, 4), (0, 0, 0, 0))
    img.putpixel((1, 1), (255, 0, 0, 255))
    out = wd_preprocess(img, 4)
    assert out[0, 0].tolist() == [255.0, 255.0, 255.0]
    assert out[1, 1].tolist() == [0.0, 0.0, 255.0]  # red, in BGR order


def test_comfy_image_roundtrip_is_exact():
    import torch

    arr = np.random.default_rng(0).integers(0, 256, (2, 9, 7, 3), dtype=np.uint8)
    as_comfy = torch.from_numpy(arr.astype(np.float32) / 255.0)  # what LoadImage produces
    pils = comfy_image_to_pil(as_comfy)
    assert len(pils) == 2
    np.testing.assert_array_equal(np.asarray(pils[1]), arr[1])
