"""LoRA training data: aspect-ratio buckets, caption shuffle/keep-N/dropout, cached latents.

Every random choice takes an explicit ``random.Random``/``torch.Generator`` derived from (seed,
epoch) or (seed, step), so a resumed run draws exactly what an uninterrupted one would.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path

from tagloom.training.data.dataset import Item, scan, split_tags
from tagloom.training.data.images import load_rgb
from tagloom.errors import InputFileError


def make_buckets(resolution: int, step: int = 64, min_size: int | None = None, max_size: int | None = None) -> list[tuple[int, int]]:
    """(width, height) pairs, multiples of ``step``, area at most resolution², sides between
    resolution/2 and resolution*2 (kohya's 256..1024 at 512)."""
    min_size = min_size or max(step, resolution // 2 // step * step)
    max_size = max_size or resolution * 2
    area = resolution * resolution
    out = set()
    w = min_size
    while w <= max_size:
        h = min(max_size, (area // w) // step * step)
        if h >= min_size:
            out.add((w, h))
            out.add((h, w))
        w += step
    out.add((resolution, resolution))
    return sorted(out)


def pick_bucket(size: tuple[int, int], buckets: list[tuple[int, int]]) -> tuple[int, int]:
    ar = size[0] / size[1]
    return min(buckets, key=lambda b: (abs(b[0] / b[1] - ar), -b[0] * b[1]))


def fit_to_bucket(im, bucket: tuple[int, int]):
    """Resize to cover the bucket, centre-crop. Returns (image, (crop_top, crop_left))."""
    from PIL import Image

    bw, bh = bucket
    scale = max(bw / im.width, bh / im.height)
    nw, nh = max(bw, round(im.width * scale)), max(bh, round(im.height * scale))
    im = im.resize((nw, nh), Image.BICUBIC)
    left, top = (nw - bw) // 2, (nh - bh) // 2
    return im.crop((left, top, left + bw, top + bh)), (top, left)


def process_caption(caption: str, rng: random.Random, shuffle: bool, keep_tokens: int, dropout: float) -> str:
    """kohya semantics: the first ``keep_tokens`` tags stay in place, the rest are shuffled; with
    probability ``dropout`` the whole caption is dropped (trains the unconditional case)."""
    if dropout and rng.random() < dropout:
        return ""
    tags = split_tags(caption)
    if shuffle and len(tags) > keep_tokens:
        head, tail = tags[:keep_tokens], tags[keep_tokens:]
        rng.shuffle(tail)
        tags = head + tail
    return ", ".join(tags)


@dataclass
class Sample:
    item: Item
    bucket: tuple[int, int]
    original_size: tuple[int, int]  # (height, width), SDXL's size conditioning
    crop: tuple[int, int] = (0, 0)


def load_samples(root: Path, resolution: int, bucket_step: int, use_buckets: bool) -> list[Sample]:
    """Usable images (readable, captioned) with their bucket. Uncaptioned images train with an empty
    caption is a common accident, so they are an error listing the files."""
    items = [i for i in scan(root)]
    if not items:
        raise InputFileError(root, "no images found")
    missing = [i.rel for i in items if i.caption is None]
    if missing:
        raise InputFileError(root, f"{len(missing)} images have no caption file (.txt/.caption): {', '.join(missing[:5])}")
    buckets = make_buckets(resolution, bucket_step) if use_buckets else [(resolution, resolution)]
    out = []
    for item in items:
        from tagloom.images import image_size

        try:
            size = image_size(item.path)  # upright (EXIF orientation), as load_rgb decodes it
        except InputFileError:
            raise
        except Exception as e:
            raise InputFileError(item.path, f"cannot be decoded as an image: {e}") from e
        out.append(Sample(item, pick_bucket(size, buckets), (size[1], size[0])))
    return out


def pixel_tensor(sample: Sample):
    import numpy as np
    import torch

    from tagloom.images import draft_hint

    # a huge JPEG is decoded reduced, never below twice the bucket's long side
    im, crop = fit_to_bucket(load_rgb(sample.item.path, max_side_hint=draft_hint(max(sample.bucket))), sample.bucket)
    sample.crop = crop
    x = torch.from_numpy(np.asarray(im, dtype=np.float32).copy()).permute(2, 0, 1) / 127.5 - 1.0
    return x


def epoch_batches(samples: list[Sample], batch_size: int, seed: int, epoch: int) -> list[list[int]]:
    """Batches of sample indices for one epoch: repeats expanded, shuffled, grouped by bucket."""
    rng = random.Random(seed * 1_000_003 + epoch)
    indices = [i for i, s in enumerate(samples) for _ in range(s.item.repeats)]
    rng.shuffle(indices)
    by_bucket: dict[tuple[int, int], list[int]] = {}
    for i in indices:
        by_bucket.setdefault(samples[i].bucket, []).append(i)
    batches = [v[j : j + batch_size] for _b, v in sorted(by_bucket.items()) for j in range(0, len(v), batch_size)]
    rng.shuffle(batches)
    return batches


def tag_frequency(samples: list[Sample]) -> dict[str, dict[str, int]]:
    """kohya's ss_tag_frequency: {folder: {tag: count}}."""
    out: dict[str, dict[str, int]] = {}
    for s in samples:
        folder = s.item.group or "."
        freq = out.setdefault(folder, {})
        for t in split_tags(s.item.caption or ""):
            freq[t] = freq.get(t, 0) + 1
    return out
