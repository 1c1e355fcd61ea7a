"""From one row of probabilities to a TagResult: thresholds per group, rating, caption and tags.

- ratings: every rating label with its score (highest first); ``rating`` = the highest one.
- general / character / artist: the tags of that group at or above the group's threshold (or its
  MCut threshold when switched on), tag -> score, highest first. Names are raw (underscores).
- caption: character, then general, then artist tags (each already selected above) whose score is
  also >= the caption threshold, formatted with the options.
- tags: the selected general tags whose score is also >= the tags threshold, formatted.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from tagloom.tagger.formatting import FormatOptions, join_tags
from tagloom.tagger.labels import Labels
from tagloom.tagger.thresholds import MCUT_CHARACTER_FLOOR, Thresholds, mcut_threshold


@dataclass
class TagResult:
    ratings: dict[str, float] = field(default_factory=dict)
    general: dict[str, float] = field(default_factory=dict)
    character: dict[str, float] = field(default_factory=dict)
    artist: dict[str, float] = field(default_factory=dict)
    caption: str = ""
    tags: str = ""
    file: str | None = None

    @property
    def rating(self) -> str | None:
        """The rating with the highest score (None for models without ratings, e.g. JoyTag)."""
        return next(iter(self.ratings), None)

    def to_json(self) -> dict:
        """The documented JSON shape: file, ratings, general, character, artist, caption, tags."""
        return {
            "file": self.file,
            "ratings": self.ratings,
            "general": self.general,
            "character": self.character,
            "artist": self.artist,
            "caption": self.caption,
            "tags": self.tags,
        }

    def all_tags(self) -> dict[str, float]:
        """Character, general and artist tags in one map (highest first)."""
        merged = {**self.character, **self.general, **self.artist}
        return dict(sorted(merged.items(), key=lambda kv: -kv[1]))


def _group(probs: np.ndarray, labels: Labels, idx: np.ndarray, threshold: float, use_mcut: bool,
           floor: float = 0.0) -> dict[str, float]:
    if idx.size == 0:
        return {}
    scores = probs[idx]
    if use_mcut:
        threshold = max(mcut_threshold(scores), floor)
    keep = np.flatnonzero(scores >= threshold)
    keep = keep[np.argsort(-scores[keep], kind="stable")]
    return {labels.names[idx[i]]: float(scores[i]) for i in keep}


def interpret(probs, labels: Labels, thresholds: Thresholds | None = None,
              options: FormatOptions | None = None, file: str | None = None) -> TagResult:
    """One image's probabilities (L,) -> TagResult."""
    thresholds = thresholds or Thresholds()
    options = options or FormatOptions()
    probs = np.asarray(probs, dtype=np.float32).reshape(-1)
    if probs.shape[0] != len(labels):
        from tagloom.errors import TagLoomError

        raise TagLoomError(f"the model gives {probs.shape[0]} scores but its label list has {len(labels)} tags")
    ratings = {}
    if labels.rating.size:
        r = labels.rating[np.argsort(-probs[labels.rating], kind="stable")]
        ratings = {labels.names[i]: float(probs[i]) for i in r}
    general = _group(probs, labels, labels.general, thresholds.general, thresholds.mcut_general)
    character = _group(probs, labels, labels.character, thresholds.character, thresholds.mcut_character,
                       MCUT_CHARACTER_FLOOR)
    artist = _group(probs, labels, labels.artist, thresholds.artist, thresholds.mcut_artist)
    caption_tags = [t for grp in (character, general, artist) for t, s in grp.items() if s >= thresholds.caption]
    tag_tags = [t for t, s in general.items() if s >= thresholds.tags]
    return TagResult(
        ratings=ratings, general=general, character=character, artist=artist,
        caption=join_tags(caption_tags, options), tags=join_tags(tag_tags, options), file=file,
    )
