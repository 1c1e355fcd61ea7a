"""The label list of a tagger: which output index is which tag, and which group it belongs to.

wd-v3 models and our trainer: ``selected_tags.csv`` with header ``tag_id,name,category,count``;
category 9 = rating, 0 = general, 4 = character, 1 = artist. Other Danbooru categories (3 copyright,
5 meta), should a model carry them, are reported with the general tags.
JoyTag: ``top_tags.txt``, one tag per line, all general (JoyTag predicts no ratings or characters).
"""

from __future__ import annotations

import csv
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from tagloom.errors import InputFileError

RATING, GENERAL, ARTIST, COPYRIGHT, CHARACTER, META = 9, 0, 1, 3, 4, 5
GROUP_OF_CATEGORY = {RATING: "rating", GENERAL: "general", CHARACTER: "character", ARTIST: "artist",
                     COPYRIGHT: "general", META: "general"}


@dataclass
class Labels:
    """Tag names in output order plus the index arrays of each group."""

    names: list[str]
    categories: np.ndarray  # int, one per label
    groups: dict[str, np.ndarray] = field(default_factory=dict)  # rating/general/character/artist -> indexes

    def __post_init__(self):
        if not self.groups:
            cats = np.asarray(self.categories)
            group_names = np.array([GROUP_OF_CATEGORY.get(int(c), "general") for c in cats]) if len(cats) else np.array([])
            self.groups = {g: np.flatnonzero(group_names == g) for g in ("rating", "general", "character", "artist")}

    def __len__(self) -> int:
        return len(self.names)

    @property
    def rating(self) -> np.ndarray:
        return self.groups["rating"]

    @property
    def general(self) -> np.ndarray:
        return self.groups["general"]

    @property
    def character(self) -> np.ndarray:
        return self.groups["character"]

    @property
    def artist(self) -> np.ndarray:
        return self.groups["artist"]


def read_selected_tags(path) -> Labels:
    """selected_tags.csv -> Labels; a missing or malformed file is an InputFileError naming it."""
    path = Path(path)
    if not path.is_file():
        raise InputFileError(path, "missing: the model folder needs its label list (selected_tags.csv)")
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            reader = csv.DictReader(f)
            fields = [h.strip() for h in (reader.fieldnames or [])]
            if "name" not in fields or "category" not in fields:
                raise InputFileError(path, f"has no 'name' and 'category' columns (header: {fields or 'empty'}); "
                                           "expected tag_id,name,category,count")
            reader.fieldnames = fields
            names, cats = [], []
            for line, row in enumerate(reader, start=2):
                name = (row.get("name") or "").strip()
                cat = (row.get("category") or "").strip()
                if not name:
                    raise InputFileError(path, f"line {line}: empty tag name")
                try:
                    cats.append(int(cat))
                except ValueError:
                    raise InputFileError(path, f"line {line}: category {cat!r} is not a number") from None
                names.append(name)
    except UnicodeDecodeError as e:
        raise InputFileError(path, f"is not UTF-8 text: {e}") from e
    except csv.Error as e:
        raise InputFileError(path, f"is not valid CSV: {e}") from e
    if not names:
        raise InputFileError(path, "has no tags")
    return Labels(names, np.asarray(cats, dtype=np.int64))


def read_top_tags(path) -> Labels:
    """JoyTag's top_tags.txt -> Labels (all general)."""
    path = Path(path)
    if not path.is_file():
        raise InputFileError(path, "missing: a JoyTag model folder needs top_tags.txt")
    try:
        names = [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    except UnicodeDecodeError as e:
        raise InputFileError(path, f"is not UTF-8 text: {e}") from e
    if not names:
        raise InputFileError(path, "has no tags")
    return Labels(names, np.zeros(len(names), dtype=np.int64))


def read_labels(model_dir) -> Labels:
    """The label list of a model folder: selected_tags.csv, else top_tags.txt."""
    model_dir = Path(model_dir)
    if (model_dir / "selected_tags.csv").is_file() or not (model_dir / "top_tags.txt").is_file():
        return read_selected_tags(model_dir / "selected_tags.csv")
    return read_top_tags(model_dir / "top_tags.txt")
