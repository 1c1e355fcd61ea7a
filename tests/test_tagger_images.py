"""Safe image loading: every awkward file users have either loads as 8-bit RGB/RGBA or fails with an
InputFileError naming the file (real PIL files written by the tests, nothing faked)."""

from __future__ import annotations

import io
import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from tagloom.errors import InputFileError
from tagloom.tagger.images import load_image


def _rgb(w=64, h=48, seed=0):
    return Image.fromarray(np.random.default_rng(seed).integers(0, 255, (h, w, 3), dtype=np.uint8))


def test_truncated_jpeg_is_a_clear_error(tmp_path):
    buf = io.BytesIO()
    _rgb(200, 150).save(buf, "JPEG", quality=90)
    path = tmp_path / "cut.jpg"
    path.write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
    with pytest.raises(InputFileError) as e:
        load_image(path)
    assert str(path) in str(e.value) and "truncated" in str(e.value)


def test_not_an_image_and_missing_file(tmp_path):
    bad = tmp_path / "notes.png"
    bad.write_text("hello")
    with pytest.raises(InputFileError, match="notes.png"):
        load_image(bad)
    with pytest.raises(InputFileError, match="does not exist"):
        load_image(tmp_path / "nope.png")


def test_cmyk_jpeg_becomes_rgb(tmp_path):
    path = tmp_path / "cmyk.jpg"
    Image.new("CMYK", (32, 16), (0, 255, 255, 0)).save(path, "JPEG")  # pure red in CMYK
    img = load_image(path)
    assert img.mode == "RGB" and img.size == (32, 16)
    r, g, b = np.asarray(img)[8, 16]
    assert r > 200 and g < 60 and b < 60


def test_16bit_png_is_scaled_not_clipped(tmp_path):
    path = tmp_path / "deep.png"
    arr = np.full((8, 8), 32768, dtype=np.uint16)  # mid grey in 16 bits
    arr[0, 0] = 65535
    Image.fromarray(arr).save(path)
    assert Image.open(path).mode.startswith("I")
    img = load_image(path)
    out = np.asarray(img)
    assert img.mode == "RGB"
    assert 126 <= out[4, 4, 0] <= 129  # PIL's own convert would give 255 here
    assert out[0, 0, 0] == 255


def test_palette_with_transparency_keeps_alpha(tmp_path):
    path = tmp_path / "pal.png"
    img = Image.new("P", (10, 10), 0)
    img.putpalette([0, 0, 0, 255, 0, 0] + [0] * 762)
    img.paste(1, (0, 0, 5, 10))
    img.info["transparency"] = 0
    img.save(path, transparency=0)
    out = load_image(path)
    assert out.mode == "RGBA"
    a = np.asarray(out)
    assert a[5, 2, 3] == 255 and a[5, 8, 3] == 0


@pytest.mark.parametrize("fmt", ["GIF", "WEBP"])
def test_animated_first_frame(tmp_path, fmt):
    path = tmp_path / f"anim.{fmt.lower()}"
    frames = [Image.new("RGB", (16, 16), c) for c in ((255, 0, 0), (0, 0, 255), (0, 255, 0))]
    frames[0].save(path, fmt, save_all=True, append_images=frames[1:], duration=50, loop=0)
    assert Image.open(path).is_animated
    out = np.asarray(load_image(path).convert("RGB"))
    r, g, b = out[8, 8]
    assert r > 200 and g < 60 and b < 60


def _png_header_only(path, w, h):
    """A PNG that claims w x h pixels (valid signature and IHDR, empty image data): enough for any
    reader that checks the size before decoding, and written in microseconds."""
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"")) + chunk(b"IEND", b""))


def test_huge_png_20000_square_is_refused_clearly(tmp_path):
    path = tmp_path / "huge.png"
    _png_header_only(path, 20000, 20000)
    with pytest.raises(InputFileError) as e:
        load_image(path)
    msg = str(e.value)
    assert str(path) in msg and "20000x20000" in msg and "TAGLOOM_MAX_IMAGE_PIXELS" in msg


def test_huge_jpeg_is_decoded_reduced(tmp_path, monkeypatch):
    # The draft path for JPEGs above the limit, exercised with a lowered limit so the test file is
    # small (a real 20000x20000 JPEG goes the same way: docs/tagger.md).
    monkeypatch.setenv("TAGLOOM_MAX_IMAGE_PIXELS", "100000")
    path = tmp_path / "big.jpg"
    _rgb(1600, 1200).save(path, "JPEG")
    out = load_image(path, max_side_hint=300)
    assert out.mode == "RGB"
    assert 300 <= max(out.size) < 1600


def test_exif_orientation_applied(tmp_path):
    path = tmp_path / "rot.jpg"
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise when displayed
    _rgb(40, 20).save(path, "JPEG", exif=exif)
    assert load_image(path).size == (20, 40)


def test_greyscale_with_alpha_and_1bit(tmp_path):
    la = tmp_path / "la.png"
    Image.new("LA", (4, 4), (128, 100)).save(la)
    assert load_image(la).mode == "RGBA"
    one = tmp_path / "one.png"
    Image.new("1", (4, 4), 1).save(one)
    assert load_image(one).mode == "RGB"
