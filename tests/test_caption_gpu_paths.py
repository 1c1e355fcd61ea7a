"""The CUDA-only code paths of the captioner and tagger, run here on the CPU where they can be.

No GPU is lent to this project: each test runs the device code with device='cpu' (torchvision's CPU
decoder stands in for nvjpeg) and checks what would decide the GPU behaviour: which files reach the
GPU decoder, what the engine sees, which device a job ends up on. Where a GPU-only condition must
be simulated (a GPU that torch reports, an onnxruntime that lists CUDA), the test says so.
"""

from __future__ import annotations

import io
import shutil
from pathlib import Path

import numpy as np
import pytest

from caption_helpers import make_awkward_images, make_good_images, tiny_model
from tagloom.caption.decode import decode_file


def _spy_gpu_decoder(dec):
    """Record the bytes TorchDecoder hands to its GPU (nvjpeg) decoder."""
    sent = []
    real = dec._decode_jpegs

    def spy(datas):
        sent.extend(datas)
        return real(datas)

    dec._decode_jpegs = spy
    return sent


def test_gpu_decoder_never_gets_truncated_or_rgb_coded_jpegs(tmp_path):
    """nvjpeg may decode a cut-short JPEG to a half-grey picture without an error, and is not known
    to honour JPEGs that store RGB instead of YCbCr (Adobe transform 0): both must take the exact
    CPU path, which reports the truncated file and decodes the RGB one with libjpeg's colours.
    A file with junk after its end marker also goes there (correct, just not accelerated)."""
    pytest.importorskip("torchvision")
    from PIL import Image

    from tagloom.caption.gpu import TorchDecoder, jpeg_info

    good = make_good_images(tmp_path, 2, sizes=((96, 64), (64, 80)))
    awkward = make_awkward_images(tmp_path / "awk")
    rgb_coded = tmp_path / "rgb_coded.jpg"
    Image.open(good[0]).save(rgb_coded, quality=90, keep_rgb=True)  # Adobe APP14, transform 0
    assert b"Adobe" in rgb_coded.read_bytes()[:64]
    padded = tmp_path / "padded.jpg"
    padded.write_bytes(good[1].read_bytes() + b"\x00" * 16)  # zero padding after EOI: still fine
    trailer = tmp_path / "trailer.jpg"
    trailer.write_bytes(good[1].read_bytes() + b"camera trailer")

    assert jpeg_info(awkward["truncated"].read_bytes()) is None
    assert jpeg_info(rgb_coded.read_bytes()) is None
    assert jpeg_info(trailer.read_bytes()) is None
    assert jpeg_info(padded.read_bytes())[:3] == (64, 80, 3)
    assert jpeg_info(good[0].read_bytes()) == (96, 64, 3, 1)

    paths = [good[0], awkward["truncated"], rgb_coded, padded, trailer]
    with TorchDecoder(56, "cpu", workers=1) as dec:
        sent = _spy_gpu_decoder(dec)
        batch, ok, failed = dec.decode_batch(paths)
    assert sent == [good[0].read_bytes(), padded.read_bytes()]
    assert ok == [good[0], rgb_coded, padded, trailer]
    assert [(Path(p).name, "truncated" in r) for p, r in failed] == [("truncated.jpg", True)]
    for k in (1, 3):  # rgb_coded, trailer: the single-image path exactly
        assert np.array_equal(batch[k].permute(1, 2, 0).numpy(), decode_file(ok[k], 56).pixels)
