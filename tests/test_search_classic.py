"""Classic completion through the public `tagloom.search.suggest` API, on a real SQLite tag
database (and on the full shared tag list when present)."""

from __future__ import annotations

import time

import pytest

from tagloom.search import suggest
from tagloom.search.classic import normalize
from tagloom.search.engine import clear_cache, get_engine
from tagloom.tags import TagDB

TAGS = [
    ("1girl", 0, 6008644, ["1girls", "sole_female"]),
    ("long_hair", 0, 4350743, ["/lh", "longhair"]),
    ("long_sleeves", 0, 1500000, []),
    ("very_long_hair", 0, 952244, ["hair_past_waist"]),
    ("school_uniform", 0, 1000000, ["seifuku"]),
    ("serafuku", 0, 700000, ["sailor_uniform"]),
    ("twintails", 0, 904712, ["/tt", "twin_tails", "twintail"]),
    ("fox_girl", 0, 75939, []),
    ("kitsune", 0, 11322, []),
    ("hatsune_miku", 4, 150000, ["miku"]),
    ("ganyu_(genshin_impact)", 4, 20000, ["ganyu"]),
    ("wlop", 1, 900, []),
]


@pytest.fixture
def db_path(tmp_path):
    clear_cache()
    path = tmp_path / "tags.sqlite"
    with TagDB(path) as db:
        db.upsert_tags({"name": n, "category": c, "post_count": p} for n, c, p, _ in TAGS)
        db.add_aliases((a, n) for n, _, _, aliases in TAGS for a in aliases)
        db.add_translations([("twintails", "zh", "双马尾")])
    yield path
    clear_cache()


def tags(results):
    return [r["tag"] for r in results]


def test_result_fields(db_path):
    r = suggest("twin", db_path=db_path)[0]
    assert set(r) >= {"tag", "category", "post_count", "alias", "reason", "score", "translations"}
    assert (r["tag"], r["category"], r["post_count"], r["reason"]) == ("twintails", "general", 904712, "prefix")
    assert r["translations"] == {"zh": ["双马尾"]}


def test_prefix_ranked_by_post_count_and_space_insensitive(db_path):
    # prefix hits by post count, then the word-start hit
    assert tags(suggest("long", db_path=db_path)) == ["long_hair", "long_sleeves", "very_long_hair"]
    assert tags(suggest("Long Ha", db_path=db_path))[0] == "long_hair"
    assert tags(suggest("school uni", db_path=db_path)) == tags(suggest("school_uni", db_path=db_path))
    assert normalize("  Long   Hair\\(x\\) ") == "long_hair(x)"


def test_alias_shows_canonical_tag(db_path):
    r = suggest("/lh", db_path=db_path)[0]
    assert (r["tag"], r["alias"], r["reason"]) == ("long_hair", "/lh", "alias")
    r = suggest("seif", db_path=db_path)[0]
    assert (r["tag"], r["alias"]) == ("school_uniform", "seifuku")
    r = suggest("miku", db_path=db_path)[0]
    assert (r["tag"], r["category"], r["reason"]) == ("hatsune_miku", "character", "alias")


def test_exact_first_then_word_starts_then_fuzzy(db_path):
    assert suggest("kitsune", db_path=db_path)[0]["reason"] == "exact"
    r = suggest("uniform", db_path=db_path)
    assert {"school_uniform"} <= set(tags(r)) and r[0]["reason"] == "word"
    r = suggest("twintials", db_path=db_path)
    assert r[0]["tag"] == "twintails" and r[0]["reason"] == "fuzzy"
    assert tags(suggest("scholl_uni", db_path=db_path))[0] == "school_uniform"
    assert suggest("zzzzqqq", db_path=db_path) == [] and suggest("   ", db_path=db_path) == []


def test_limit_and_no_duplicates(db_path):
    r = suggest("l", limit=2, db_path=db_path)
    assert len(r) == 2
    r = suggest("twin", limit=10, db_path=db_path)
    assert len(tags(r)) == len(set(tags(r)))  # name and its aliases count once


def test_engine_is_cached_and_reloads_when_the_database_changes(db_path):
    e = get_engine(db_path)
    assert get_engine(db_path) is e
    assert suggest("newtag", db_path=db_path) == []
    with TagDB(db_path) as db:  # another connection commits
        db.upsert_tags([{"name": "newtag_here", "category": 0, "post_count": 5}])
    assert tags(suggest("newtag", db_path=db_path)) == ["newtag_here"]


def test_semantic_true_without_index_is_a_clear_error(db_path):
    from tagloom.errors import TagLoomError

    with pytest.raises(TagLoomError, match="tagloom index build"):
        suggest("two ponytails", semantic=True, db_path=db_path)
    assert suggest("twin", semantic=None, db_path=db_path)[0]["tag"] == "twintails"  # auto: classic only


def test_suggest_cli_json(db_path, capsys):
    import json

    from tagloom.cli import main

    assert main(["suggest", "twin", "--limit", "3", "--json", "--db", str(db_path)]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out[0]["tag"] == "twintails" and set(out[0]) >= {"tag", "category", "post_count", "alias", "reason", "score"}


def test_full_shared_list(tmp_path, shared_data):
    """The real 140k-tag list: correctness of a few queries; latency is measured, not asserted
    (bench/autocomplete.py records it)."""
    from tagloom.tags.importers import import_file

    clear_cache()
    path = tmp_path / "full.sqlite"
    with TagDB(path) as db:
        import_file(db, shared_data / "danbooru.csv")
    assert tags(suggest("long", db_path=path))[0] == "long_hair"
    assert suggest("/lh", db_path=path)[0]["tag"] == "long_hair"
    assert suggest("twintials", db_path=path)[0]["tag"] == "twintails"
    t = time.perf_counter()
    for q in ("a", "lo", "sch", "school_u", "hatsune", "twintials"):
        suggest(q, semantic=False, db_path=path)
    print(f"6 queries over the full list: {(time.perf_counter() - t) * 1000:.1f} ms")
    clear_cache()


def test_translations_complete_like_aliases(db_path):
    r = suggest("双马", db_path=db_path, semantic=False)
    assert (r[0]["tag"], r[0]["alias"], r[0]["reason"]) == ("twintails", "双马尾", "translation")
    assert suggest("双马尾", db_path=db_path, semantic=False)[0]["reason"] == "translation"
    assert get_engine(db_path).tag_count == len(TAGS) == len(get_engine(db_path).names)


def test_concurrent_queries_during_reloads(db_path):
    """Queries in threads while another connection keeps changing the database: every answer is
    whole (no mix of an old and a new snapshot) and nothing raises."""
    import threading

    errors = []

    def worker():
        try:
            for _ in range(200):
                r = suggest("twin", db_path=db_path, semantic=False)
                assert r and r[0]["tag"] == "twintails"
        except Exception as e:  # noqa: BLE001 - collected for the assertion below
            errors.append(e)

    threads = [threading.Thread(target=worker) for _ in range(3)]
    for t in threads:
        t.start()
    with TagDB(db_path) as db:
        for i in range(10):
            db.upsert_tags([{"name": f"extra_{i}", "category": 0, "post_count": i}])
    for t in threads:
        t.join()
    assert not errors


def test_empty_database(tmp_path):
    clear_cache()
    path = tmp_path / "empty.sqlite"
    assert suggest("long", db_path=path) == [] and get_engine(path).tag_count == 0
    clear_cache()


def test_typo_rows_only_where_nothing_matches_as_typed(tmp_path):
    """One-typo matches fill in for a word that matches nothing ("blonde hiar"); beside real
    completions they were filler ("long ha" -> pants, from its alias long_pants)."""
    clear_cache()
    path = tmp_path / "tags.sqlite"
    with TagDB(path) as db:
        db.upsert_tags([{"name": n, "category": 0, "post_count": p} for n, p in
                        (("long_hair", 4350743), ("pants", 419000), ("blonde_hair", 1500000), ("flower", 800000),
                         ("fai_d._flowright", 300))])
        db.add_aliases([("long_pants", "pants")])
    got = suggest("long ha", limit=10, semantic=False, db_path=path)
    assert [r["tag"] for r in got] == ["long_hair"]
    assert [(r["tag"], r["reason"]) for r in suggest("blonde hiar", semantic=False, db_path=path)][:1] == [("blonde_hair", "fuzzy")]
    # a match inside another name's later word is no real completion: the typo row stays
    assert "flower" in [r["tag"] for r in suggest("flowr", semantic=False, db_path=path)]
    clear_cache()
