"""WebDataset-style tar shards for large datasets: ``<key>.<image ext>`` + ``<key>.txt`` pairs,
grouped by key, uncompressed, ~N images per shard.

Why: millions of small files are slow to list, copy and open on network disks; a few thousand tars
stream well. Reading stays random-access (the shard index holds each member's byte offset), so
the trainers' deterministic shuffling and exact resume work the same as with folders. Any tar in
this layout (e.g. from the ``webdataset`` tools) can be read; no TensorFlow, no extra package.
"""

from __future__ import annotations

import io
import json
import os
import tarfile
from dataclasses import dataclass
from pathlib import Path

from tagloom.errors import InputFileError

IMAGE_EXTS = {"png", "jpg", "jpeg", "webp", "bmp", "gif", "tif", "tiff"}


@dataclass(frozen=True)
class ShardMember:
    """One image inside a shard: where its bytes are."""

    tar: str
    name: str
    offset: int
    size: int

    @property
    def label(self) -> str:
        """How errors name the member: ``<tar>:<member name>``."""
        return f"{self.tar}:{self.name}"

    def read(self) -> bytes:
        with open(self.tar, "rb") as f:
            f.seek(self.offset)
            return f.read(self.size)


def _add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.mtime = 0  # reproducible shards
    tar.addfile(info, io.BytesIO(data))


def write_shards(items, out: Path, prefix: str, per_shard: int = 1000) -> list[Path]:
    """Write ``items`` (tagloom.training.data.dataset.Item) as ``prefix-000000.tar``...; keys are the
    running index (the relative path is kept in ``<key>.json``)."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for start in range(0, len(items), per_shard):
        path = out / f"{prefix}-{start // per_shard:06d}.tar"
        tmp = path.with_suffix(".tar.tmp")
        with tarfile.open(tmp, "w", format=tarfile.USTAR_FORMAT) as tar:
            for i, item in enumerate(items[start : start + per_shard], start):
                key = f"{i:09d}"
                _add(tar, f"{key}{item.path.suffix.lower()}", item.path.read_bytes())
                _add(tar, f"{key}.txt", (item.caption or "").encode("utf-8"))
                _add(tar, f"{key}.json", json.dumps({"rel": item.rel}).encode("utf-8"))
        os.replace(tmp, path)
        paths.append(path)
    return paths


def read_shards(tars: list[Path]) -> list[tuple[ShardMember, str, str]]:
    """(image member, caption text, key) for every sample with an image and a caption."""
    out = []
    for tar_path in tars:
        try:
            with tarfile.open(tar_path, "r:") as tar:  # uncompressed only: offsets must be byte offsets
                groups: dict[str, dict[str, tarfile.TarInfo]] = {}
                for m in tar:
                    if not m.isfile():
                        continue
                    base = os.path.basename(m.name)
                    key, _, ext = base.partition(".")
                    groups.setdefault(os.path.join(os.path.dirname(m.name), key), {})[ext.lower()] = m
                for key, members in groups.items():
                    img = next((members[e] for e in members if e in IMAGE_EXTS), None)
                    cap = members.get("txt") or members.get("caption")
                    if img is None or cap is None:
                        continue
                    text = tar.extractfile(cap).read().decode("utf-8-sig")
                    out.append((ShardMember(str(tar_path), img.name, img.offset_data, img.size), text, key))
        except (tarfile.TarError, OSError) as e:
            raise InputFileError(tar_path, f"not a readable uncompressed tar shard: {e}") from e
    return out


def open_image(member: ShardMember):
    """The member's image as 8-bit RGB (same conversions as tagloom.training.data.images.load_rgb)."""
    from tagloom.training.data.images import load_rgb

    return load_rgb(io.BytesIO(member.read()), name=member.label)
