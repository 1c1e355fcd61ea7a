"""Shared by the tests/test_caption*.py files: one tiny model per test process, a folder of real
image files of every awkward kind, and the single-image float32 reference."""

from __future__ import annotations

import functools
import shutil
import tempfile
from pathlib import Path

import numpy as np


@functools.lru_cache(maxsize=None)
def tiny_model() -> Path:
    """A tiny EVA-02 wd-style model folder (ONNX + safetensors), built once per test process."""
    from tiny_models import make_tiny_tagger

    return make_tiny_tagger(Path(tempfile.mkdtemp(prefix="tagloom-caption-model-")) / "tiny", image_size=56)


def _rng_image(rng, w, h, channels=3):
    # Smooth gradients plus noise: compress like photos, and spread the tiny model's scores.
    yy, xx = np.mgrid[0:h, 0:w]
    base = np.stack([(xx * (c + 1) * 255 // max(w, 1) + yy * (3 - c) * 255 // max(h, 1)) % 256 for c in range(channels)], -1)
    noise = rng.integers(0, 60, (h, w, channels))
    return np.clip(base + noise, 0, 255).astype(np.uint8)


def make_good_images(folder: Path, n: int, seed: int = 0, sizes=((96, 64), (64, 120), (200, 150), (56, 56))) -> list[Path]:
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        w, h = sizes[i % len(sizes)]
        path = folder / f"img{i:03d}.jpg"
        Image.fromarray(_rng_image(rng, w, h)).save(path, quality=90)
        out.append(path)
    return out


def make_awkward_images(folder: Path, seed: int = 1) -> dict[str, Path]:
    """Files users really have. Keys say what each is; 'truncated', 'not_image' must fail."""
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    out = {}
    rgb = _rng_image(rng, 80, 60)
    out["cmyk"] = folder / "cmyk.jpg"
    Image.fromarray(rgb).convert("CMYK").save(out["cmyk"], quality=90)
    out["png16"] = folder / "deep16.png"
    Image.fromarray(_rng_image(rng, 70, 50, 1)[..., 0].astype(np.uint16) * 257).save(out["png16"])
    out["rgba"] = folder / "alpha.png"
    Image.fromarray(_rng_image(rng, 64, 48, 4), "RGBA").save(out["rgba"])
    out["palette"] = folder / "palette.png"
    pal = Image.fromarray(rgb).convert("P")
    pal.info["transparency"] = 0
    pal.save(out["palette"], transparency=0)
    out["animated"] = folder / "anim.gif"
    frames = [Image.fromarray(_rng_image(rng, 50, 40)) for _ in range(3)]
    frames[0].save(out["animated"], save_all=True, append_images=frames[1:], duration=50, loop=0)
    out["webp"] = folder / "photo.webp"
    Image.fromarray(rgb).save(out["webp"])
    good = folder / "_tmp_full.jpg"
    Image.fromarray(_rng_image(rng, 300, 200)).save(good, quality=95)
    out["truncated"] = folder / "truncated.jpg"
    out["truncated"].write_bytes(good.read_bytes()[:1500])
    good.unlink()
    out["not_image"] = folder / "notes.png"
    out["not_image"].write_bytes(b"this is not a PNG at all")
    return out


def reference_probs(model_dir: Path, paths) -> np.ndarray:
    """The single-image path: tagloom.tagger, float32 ONNX on the CPU, one image per call."""
    from tagloom.tagger import load_tagger

    tagger = load_tagger(model_dir, backend="onnx", device="cpu")
    try:
        return np.concatenate([tagger.predict(tagger.preprocess_file(p)[None]) for p in paths])
    finally:
        tagger.unload()


def reference_results(model_dir: Path, paths, root: Path) -> dict[str, dict]:
    from tagloom.tagger import load_tagger

    tagger = load_tagger(model_dir, backend="onnx", device="cpu")
    try:
        out = {}
        for p in paths:
            res = tagger.interpret(tagger.predict(tagger.preprocess_file(p)[None])[0], file=Path(p).relative_to(root).as_posix())
            out[res.file] = res.to_json()
        return out
    finally:
        tagger.unload()


def copy_tree(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst
