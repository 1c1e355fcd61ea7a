"""Decoding on the accelerator: JPEG bytes -> square model pixels on the GPU (nvjpeg via torchvision).

On an H100, PIL on 16 processes decodes ~111 img/s of 1.5 MP JPEGs while nvjpeg does ~2,200
(../shared/README.md), so on CUDA the CPU only reads bytes. Per batch:

1. threads read the files' bytes (I/O only);
2. baseline/progressive 3-channel JPEGs below the pixel limit, without EXIF rotation, are decoded together with
   ``torchvision.io.decode_jpeg(list, device=cuda)``; if the batch call fails, one by one, and an image
   the GPU cannot decode falls back to the CPU path;
3. everything else (PNG, WebP, CMYK, rotated or huge JPEGs, ...) goes through the CPU path, which is the
   single-image path exactly (tagloom.images.load_square: the one image path);
4. each GPU image is centred on a white square and resized to the model's size with antialiased
   bicubic (a = -0.5, PIL's kernel), horizontal pass then vertical pass, each rounded to uint8 as PIL
   does: pixels agree with PIL's within one level (tests/test_caption_pipeline.py checks this on CPU).

The same code runs with device='cpu' (torchvision's CPU decoder), which is how it is tested here.
"""

from __future__ import annotations

import re
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from tagloom.caption.decode import Decoded, decode_file, default_workers


# Decoded frame bytes one nvjpeg call may hold on the GPU (a batch is decoded in such parts).
GPU_DECODE_BYTES = 1 << 30


def jpeg_info(data: bytes) -> tuple[int, int, int, int] | None:
    """(width, height, components, EXIF orientation) from a JPEG's headers, or None when it is not a
    JPEG we trust the GPU with (not a JPEG, lossless/arithmetic-coded, colour stored as RGB rather
    than YCbCr, cut short, or headers we cannot read). Orientation is 1 when the file has none."""
    if len(data) < 4 or data[0] != 0xFF or data[1] != 0xD8:
        return None
    # A truncated JPEG must be reported, not captioned: libjpeg (the CPU path) refuses it, while
    # nvjpeg may hand back a half-grey picture without an error. No end-of-image marker at the end
    # (padding zeros allowed) -> the CPU path, which names the file. Files with other trailing data
    # after the marker also go there: correct, just not accelerated.
    if data.rstrip(b"\x00")[-2:] != b"\xff\xd9":
        return None
    i = 2
    n = len(data)
    orientation = 1
    xmp_orientation = 1
    adobe_transform = None
    while i + 4 <= n:
        if data[i] != 0xFF:
            return None
        marker = data[i + 1]
        if marker == 0xFF:  # fill byte
            i += 1
            continue
        if marker in (0xD8, 0x01) or 0xD0 <= marker <= 0xD7:
            i += 2
            continue
        length = (data[i + 2] << 8) | data[i + 3]
        if marker == 0xE1 and data[i + 4 : i + 10] == b"Exif\x00\x00":
            orientation = _exif_orientation(data[i + 10 : i + 2 + length])
        elif marker == 0xE1 and data[i + 4 : i + 4 + len(_XMP)] == _XMP:
            # Pillow also reads the orientation from XMP when EXIF has none (Image.getexif), and
            # the CPU path turns such photos upright: they must not reach nvjpeg either. (Any
            # orientation other than 1 only sends a file to the CPU path, which is always exact.)
            found = _XMP_ORIENTATION.search(data, i + 4, i + 2 + length)
            xmp_orientation = int(found[2]) if found else 1
        if marker == 0xEE and data[i + 4 : i + 9] == b"Adobe" and i + 15 < n:
            adobe_transform = data[i + 15]  # 0: no colour transform (RGB or CMYK), 1: YCbCr, 2: YCCK
        if marker in (0xC0, 0xC1, 0xC2):  # baseline, extended, progressive Huffman
            if i + 9 >= n or data[i + 4] != 8:
                return None  # 12/16-bit samples: libjpeg's answer (an error naming the file) decides
            h = (data[i + 5] << 8) | data[i + 6]
            w = (data[i + 7] << 8) | data[i + 8]
            components = data[i + 9]
            ids = bytes(data[i + 10 + 3 * k] for k in range(components) if i + 10 + 3 * k < n)
            if components == 3 and (adobe_transform == 0 or (adobe_transform is None and ids == b"RGB")):
                # Three channels stored as RGB (libjpeg's rules: Adobe transform 0, or component
                # ids 'R','G','B' without an Adobe marker). libjpeg outputs them as they are; nvjpeg
                # is not known to honour this and would convert them as YCbCr (wrong colours).
                return None
            if orientation == 1:
                orientation = xmp_orientation
            return w, h, components, orientation
        if 0xC3 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC):
            return None  # lossless / arithmetic coding: leave it to libjpeg on the CPU
        if marker == 0xDA:  # start of scan before any frame header
            return None
        i += 2 + length
    return None


_XMP = b"http://ns.adobe.com/xap/1.0/\x00"
_XMP_ORIENTATION = re.compile(rb'tiff:Orientation(="|>)([0-9])')  # the pattern Pillow's getexif uses


def _exif_orientation(tiff: bytes) -> int:
    """The Orientation tag (0x0112) of IFD0 in an EXIF TIFF block; 1 when absent, 0 when unreadable."""
    try:
        order = {b"II": "little", b"MM": "big"}[tiff[:2]]
        u16 = lambda o: int.from_bytes(tiff[o : o + 2], order)  # noqa: E731
        ifd = int.from_bytes(tiff[4:8], order)
        for k in range(u16(ifd)):
            entry = ifd + 2 + 12 * k
            if u16(entry) == 0x0112:
                return u16(entry + 8)
        return 1
    except (KeyError, IndexError, ValueError):
        return 0


class TorchDecoder:
    """Batches of paths -> (uint8 tensor (B, 3, S, S) RGB on `device`, decoded paths, failures)."""

    def __init__(self, size: int, device: str = "cuda", workers: int | None = None,
                 decode_bytes_limit: int = GPU_DECODE_BYTES):
        import torch

        self.size = size
        self.decode_bytes_limit = decode_bytes_limit
        self.device = torch.device(device)
        self.workers = workers or default_workers()
        self._pool = ThreadPoolExecutor(self.workers, thread_name_prefix="tagloom-read")
        self._torch = torch
        self._stream = torch.cuda.Stream(self.device) if self.device.type == "cuda" else None

    def close(self):
        self._pool.shutdown(wait=True, cancel_futures=True)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    @staticmethod
    def _read(path: Path) -> bytes | Exception:
        try:
            with open(path, "rb") as f:
                return f.read()
        except OSError as e:
            return e

    def decode_batch(self, paths: list[Path]):
        return self.decode_bytes(paths, list(self._pool.map(self._read, paths)))

    def decode_bytes(self, paths: list[Path], datas: list):
        """Like decode_batch, for bytes already read (an OSError in place of bytes = unreadable).

        On CUDA the work runs on a side stream, so decoding batch k+1 (in the job's reader thread)
        overlaps the model running batch k on the default stream; the batch is handed over only
        once it is complete (stream synchronised), and marked as used by the default stream so the
        allocator does not recycle it under the model.
        """
        if self._stream is None:
            return self._decode_bytes(paths, datas)
        torch = self._torch
        with torch.cuda.stream(self._stream):
            batch, ok, failed = self._decode_bytes(paths, datas)
        self._stream.synchronize()
        if batch is not None:
            batch.record_stream(torch.cuda.default_stream(self.device))
        return batch, ok, failed

    def _decode_bytes(self, paths: list[Path], datas: list):
        from tagloom.images import max_pixels

        torch = self._torch
        gpu_idx, cpu_idx = [], []
        limit = max_pixels()
        chunks: list[list[int]] = [[]]
        chunk_bytes = 0
        for i, data in enumerate(datas):
            info = jpeg_info(data) if isinstance(data, bytes) else None
            # nvjpeg ignores EXIF orientation (torchvision applies it on the CPU only), so rotated
            # photos take the CPU path, which turns them upright like the single-image path.
            if info is not None and info[2] == 3 and info[3] == 1 and info[0] * info[1] <= limit:
                gpu_idx.append(i)
                # nvjpeg allocates every frame of a call at once: 64 photos of 24 MP are 4.6 GB of
                # frames beside the model. Calls of at most GPU_DECODE_BYTES of frames, each squared
                # and released before the next, bound that whatever the photos' size.
                frame_bytes = 3 * info[0] * info[1]
                if chunks[-1] and chunk_bytes + frame_bytes > self.decode_bytes_limit:
                    chunks.append([])
                    chunk_bytes = 0
                chunks[-1].append(i)
                chunk_bytes += frame_bytes
            else:
                cpu_idx.append(i)
        out: dict[int, object] = {}
        for n_chunk, chunk in enumerate(chunks if gpu_idx else []):
            if n_chunk and self._stream is not None:
                # torchvision allocates a call's frames on our (current) stream but has nvjpeg
                # write them from its own stream, without waiting for ours (pytorch/vision PR
                # 9606). The previous part's frames were just freed while our resize kernels
                # may still be reading them; the allocator would hand those blocks to this call
                # and nvjpeg could overwrite pixels not yet resized. Wait for our stream first.
                self._stream.synchronize()
            frames = self._decode_jpegs([datas[i] for i in chunk])
            for k, i in enumerate(chunk):
                frame, frames[k] = frames[k], None
                if frame is None:
                    cpu_idx.append(i)
                    continue
                try:
                    out[i] = self._square(frame)
                except Exception:  # noqa: BLE001 - e.g. out of GPU memory for one huge photo
                    cpu_idx.append(i)  # the exact CPU path still captions it
                del frame
            del frames
        # CPU fallback: the exact single-image path, in the read threads (PIL releases the GIL).
        for i, dec in zip(cpu_idx, self._pool.map(lambda p: decode_file(p, self.size), [paths[i] for i in cpu_idx])):
            out[i] = dec
        pixels, ok, failed = [], [], []
        for i, path in enumerate(paths):
            item = out[i]
            if isinstance(item, Decoded):
                if item.pixels is None:
                    failed.append((path, item.error))
                    continue
                item = torch.from_numpy(np.array(item.pixels)).permute(2, 0, 1).to(self.device, non_blocking=True)
            pixels.append(item)
            ok.append(path)
        batch = torch.stack(pixels) if pixels else None
        return batch, ok, failed

    def _decode_jpegs(self, datas: list[bytes]) -> list:
        """Decoded (3, H, W) uint8 tensors on the device, None where the GPU decoder refused one."""
        import warnings

        with warnings.catch_warnings():
            # torchvision 0.29 marks its image codecs deprecated in favour of TorchCodec; they still
            # work and are what ships beside every torch. Revisit when they are removed.
            warnings.simplefilter("ignore", DeprecationWarning)
            import torchvision.io as tio

        torch = self._torch
        tensors = [torch.frombuffer(bytearray(d), dtype=torch.uint8) for d in datas]
        kwargs = {"mode": tio.ImageReadMode.RGB, "device": self.device}
        try:
            frames = tio.decode_jpeg(tensors, **kwargs)
            return list(frames)
        except Exception:
            out = []
            for t in tensors:
                try:
                    out.append(tio.decode_jpeg(t, **kwargs))
                except Exception:
                    out.append(None)
            return out

    def _square(self, frame):
        """(3, H, W) uint8 -> (3, S, S) uint8: white square, PIL-matching bicubic in two rounded passes."""
        import torch.nn.functional as F

        torch = self._torch
        _, h, w = frame.shape
        side = max(h, w)
        if h != w:
            canvas = torch.full((3, side, side), 255, dtype=torch.uint8, device=frame.device)
            top, left = (side - h) // 2, (side - w) // 2
            canvas[:, top : top + h, left : left + w] = frame
            frame = canvas
        if side == self.size:
            return frame
        x = frame.unsqueeze(0).float()
        x = F.interpolate(x, size=(side, self.size), mode="bicubic", antialias=True, align_corners=False)
        x = x.round_().clamp_(0, 255)
        x = F.interpolate(x, size=(self.size, self.size), mode="bicubic", antialias=True, align_corners=False)
        return x.round_().clamp_(0, 255).to(torch.uint8)[0]


def gpu_decode_available() -> bool:
    try:
        import torch
        import torchvision.io  # noqa: F401

        return torch.cuda.is_available()
    except Exception:
        return False

