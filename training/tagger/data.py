"""Tagger training data: image -> normalised BGR tensor (the wd input convention), tags -> a
multi-hot vector. Decoding runs in DataLoader worker processes (parallel decoding).

The image before augmentation is exactly what inference feeds the model (``tagloom.images.load_square``:
the same decoding, EXIF orientation, 16-bit scaling, alpha on white, pixel limit, white square and
bicubic resize); the augmentation is put on top here, as timm builds its train transform on the
eval one.
"""

from __future__ import annotations

import io
from pathlib import Path

from tagloom.images import load_square, square_resized
from tagloom.training.data.images import load_rgb  # noqa: F401 - re-exported (older callers import it here)
from tagloom.training.data.shards import ShardMember, open_image  # noqa: F401 - open_image re-exported

# The wd taggers' square pad + bicubic resize, under its training name (the one in tagloom.images).
pad_square_resize = square_resized


def load_square_image(source, size: int):
    """A training sample's image (a path or a tar shard member) as the model's ``size`` x ``size``
    RGB input before augmentation: the inference path's pixels exactly."""
    if isinstance(source, ShardMember):
        return load_square(io.BytesIO(source.read()), size, name=source.label)
    return load_square(source, size)


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

    def load(self, i: int):
        """Sample ``i``'s image before augmentation (the eval transform): inference's input pixels."""
        return load_square_image(self.paths[i], self.image_size)

    def __getitem__(self, i: int):
        import torch

        im = self.load(i)
        if self.augment is not None:
            im = self.augment(im)
        y = torch.zeros(self.num_classes, dtype=torch.float32)
        if self.labels[i]:
            y[self.labels[i]] = 1.0
        return to_tensor_bgr(im, self.mean, self.std), y
