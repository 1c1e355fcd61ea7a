"""Tag search: classic completion (prefix, alias, word start, typo-tolerant) and semantic completion
(dense + sparse + ColBERT over an embedded index), fused with a popularity prior.

The one call the front ends need::

    from tagloom.search import suggest
    suggest("two pony", limit=10)  # -> [{"tag": "twintails", "category": "general", ...}, ...]

See docs/search.md for the result fields and the settings.
"""

from __future__ import annotations

from pathlib import Path


def suggest(
    query: str,
    limit: int = 10,
    semantic: bool | None = None,
    db_path: str | Path | None = None,
    embedder: str | None = None,
    wait_for_model: bool = False,
) -> list[dict]:
    """Tags for what the user is typing, best first.

    Each result is a dict: ``tag`` (canonical name, underscores), ``category`` (general, artist,
    copyright, character, meta, rating or unknown), ``category_id`` (Danbooru number or None),
    ``post_count``, ``alias`` (the alias that matched, or None), ``reason`` (``exact``, ``prefix``,
    ``alias``, ``word``, ``fuzzy`` or ``semantic``), ``score`` (higher is better; only the order is
    meaningful), ``translations`` ({lang: [text, ...]}) and ``main_category`` (the pack's category or
    None).

    ``semantic``: None = use the semantic index when one is built (setting ``search_semantic``),
    True = require it (TagLoomError when none), False = classic only (fastest, for every keystroke).
    The engine is cached per database and reloads by itself when the database or index changes.
    ``wait_for_model``: wait for the embedding model to load rather than answer classic-only after
    ``search_model_wait`` seconds (typing wants the latter, a one-shot command the former).
    """
    from tagloom.search import settings
    from tagloom.search.engine import get_engine

    if not query or not query.strip():
        return []
    if semantic is None:
        mode = str(settings.get("search_semantic")).lower()
        semantic = {"on": True, "off": False}.get(mode)
    return get_engine(db_path).suggest(query, limit=limit, semantic=semantic, embedder=embedder,
                                       wait_for_model=wait_for_model)


__all__ = ["suggest"]
