"""Chinese phrases completed from the translated words they are made of (tagloom/search/compose.py)."""

from __future__ import annotations

import numpy as np

from tagloom.search.compose import Composer, is_cjk

NAMES = ["angel", "wings", "angel_wings", "black_angel_wings", "holding", "holding_sword", "sword",
         "angel_(character)", "white_dress", "dress"]
CATS = [0, 0, 0, 0, 0, 0, 0, 4, 0, 0]
POSTS = np.array([50_000, 400_000, 60_000, 900, 700_000, 90_000, 200_000, 10, 80_000, 900_000])
ZH = {"angel": ["天使"], "wings": ["翅膀", "翼"], "holding": ["拿着"], "dress": ["连衣裙"], "angel_(character)": ["天使"]}
TRANSLATIONS = [{"zh": ZH[n]} if n in ZH else {} for n in NAMES]


def composer():
    return Composer(NAMES, CATS, POSTS, TRANSLATIONS)


def test_a_phrase_of_two_translations_finds_the_tag_that_holds_both():
    c = composer()
    assert [(t, NAMES[r]) for t, r in c.parts("天使翅膀")] == [("天使", "angel"), ("翅膀", "wings")]
    got = [(NAMES[r], shown) for r, shown in c.complete("天使翅膀", 5)]
    assert got == [("angel_wings", "天使+翅膀"), ("black_angel_wings", "天使+翅膀")]  # fewest extra words first


def test_no_composition_from_one_part_or_too_much_unknown_text():
    c = composer()
    assert c.complete("翅膀", 5) == []  # one part: plain translation completion handles it
    assert c.complete("拿着剑", 5) == []  # 剑 has no translation here: one part and one unknown character
    assert c.parts("天使的大翅膀") == []  # two characters no translation covers
    assert [NAMES[r] for r, _ in c.complete("天使的翅膀", 5)] == ["angel_wings", "black_angel_wings"]  # one particle


def test_only_general_tags_are_compositions():
    c = composer()
    assert all(CATS[r] == 0 for r, _ in c.complete("天使翅膀", 10))
    assert is_cjk("天使") and not is_cjk("angel wings")


def test_the_engine_uses_it_when_nothing_matches_as_typed(tmp_path):
    from autocomplete_fixtures import make_tag_db

    from tagloom.search import suggest
    from tagloom.search.engine import clear_cache
    from tagloom.tags import TagDB

    clear_cache()
    db = make_tag_db(tmp_path / "tags.sqlite")
    with TagDB(db) as t:
        t.upsert_tags([{"name": "angel", "category": 0, "post_count": 50_000},
                       {"name": "angel_wings", "category": 0, "post_count": 60_000},
                       {"name": "wings", "category": 0, "post_count": 400_000}])
        t.add_translations([("angel", "zh", "天使"), ("wings", "zh", "翅膀")])
    try:
        rows = suggest("天使翅膀", limit=5, semantic=False, db_path=db)
        assert rows[0]["tag"] == "angel_wings" and rows[0]["reason"] == "translation" and rows[0]["alias"] == "天使+翅膀"
        assert suggest("天使", limit=1, semantic=False, db_path=db)[0]["tag"] == "angel"  # a translation as typed
    finally:
        clear_cache()
