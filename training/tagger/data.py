"""Tagger training data: image -> normalised BGR tensor (the wd input convention), tags -> a
multi-hot vector. Decoding runs in DataLoader worker processes (parallel decoding)."""

from __future__ import annotations

from pathlib import Path

from tagloom.training.data.images import load_rgb
from tagloom.training.data.shards import ShardMember, open_image


def pad_square_resize(im, size: int):
    """Pad to a white square (centred) and resize bicubic: the wd taggers' preprocessing."""
    from PIL import Image

    w, h = im.size
    side = max(w, h)
    if (w, h) != (side, side):
        canvas = Image.new("RGB", (side, side), (255, 255, 255))
        canvas.paste(im, ((side - w) // 2, (side - h) // 2))
        im = canvas
    if side != size:
        im = im.resize((size, size), Image.BICUBIC)
    return im


def to_tensor_bgr(im, mean, std):
    import numpy as np
    import torch

    arr = np.asarray(im, dtype=np.float32)[:, :, ::-1] / 255.0  # RGB -> BGR, 0..1
    x = torch.from_numpy(arr.copy()).permute(2, 0, 1)
    m = torch.tensor(mean, dtype=torch.float32).view(3, 1, 1)
    s = torch.tensor(std, dtype=torch.float32).view(3, 1, 1)
    return (x - m) / s


class TaggerDataset:
    """A torch-style map dataset over (image path or tar shard member, tag indices)."""

    def __init__(self, paths: list[Path], labels: list[list[int]], num_classes: int, image_size: int,
                 mean, std, augment: bool = False):
        self.paths = paths
        self.labels = labels
        self.num_classes = num_classes
        self.image_size = image_size
        self.mean, self.std = mean, std
        self.augment = None
        if augment:
            from torchvision.transforms import TrivialAugmentWide

            self.augment = TrivialAugmentWide()

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int):
        import torch

        source = self.paths[i]
        if isinstance(source, ShardMember):
            im = open_image(source)
        else:
            im = load_rgb(source)
        im = pad_square_resize(im, self.image_size)
        if self.augment is not None:
            im = self.augment(im)
        y = torch.zeros(self.num_classes, dtype=torch.float32)
        if self.labels[i]:
            y[self.labels[i]] = 1.0
        return to_tensor_bgr(im, self.mean, self.std), y
