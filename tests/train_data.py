"""Synthetic datasets for the training tests: small images whose tags follow from what is drawn
(colour, shape), so a model can actually learn them in a few steps."""

from __future__ import annotations

import random
from pathlib import Path

COLOURS = {"red": (220, 30, 30), "green": (30, 200, 40), "blue": (30, 40, 220)}
SHAPES = ("circle", "square")


def make_image(path: Path, colour: str, shape: str, size=(48, 40), seed: int = 0) -> None:
    from PIL import Image, ImageDraw

    rnd = random.Random(seed)
    im = Image.new("RGB", size, tuple(rnd.randint(200, 255) for _ in range(3)))
    d = ImageDraw.Draw(im)
    x0, y0 = rnd.randint(0, 8), rnd.randint(0, 8)
    box = (x0, y0, x0 + size[0] // 2 + 8, y0 + size[1] // 2 + 8)
    (d.ellipse if shape == "circle" else d.rectangle)(box, fill=COLOURS[colour])
    im.save(path)


def make_dataset(root: Path, n: int = 32, seed: int = 0, sub: str = "", ext: str = ".png",
                 caption_ext: str = ".txt", size=(48, 40)) -> list[Path]:
    """n images + captions like ``general, red, circle, solo`` under root/sub."""
    rnd = random.Random(seed)
    folder = Path(root) / sub if sub else Path(root)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(n):
        colour, shape = rnd.choice(list(COLOURS)), rnd.choice(SHAPES)
        p = folder / f"img_{seed}_{i:03d}{ext}"
        make_image(p, colour, shape, size=size, seed=seed * 1000 + i)
        tags = ["general", colour, shape] + (["solo"] if i % 2 else [])
        p.with_suffix(caption_ext).write_text(", ".join(tags))
        paths.append(p)
    return paths
