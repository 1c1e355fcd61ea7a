"""Idea -> tags (snapping, ordering, weights) and the LLM nodes, over the FAKE Ollama server
(tests/llm_servers.py; Ollama itself cannot be installed here)."""

from __future__ import annotations

import json

import pytest

from llm_servers import FakeOllama
from tagloom.cli import main as cli
from tagloom.llm.ideas import TagSnapper, idea_to_tags, split_weights
from tagloom.llm.providers import RetryPolicy, make_provider
from tagloom.tags.db import TagDB


@pytest.fixture
def server():
    s = FakeOllama().start()
    yield s
    s.stop()


def _fill(db: TagDB):
    db.upsert_tags([
        {"name": "1girl", "category": 0, "post_count": 6000000},
        {"name": "solo", "category": 0, "post_count": 5000000},
        {"name": "red_hair", "category": 0, "post_count": 900000},
        {"name": "temple", "category": 0, "post_count": 20000},
        {"name": "cherry_blossoms", "category": 0, "post_count": 100000},
        {"name": "hakurei_reimu", "category": 4, "post_count": 80000},
        {"name": "touhou", "category": 3, "post_count": 900000},
        {"name": "from_above", "category": 0, "post_count": 50000},
        {"name": "masterpiece", "category": 5, "post_count": 10},
        {"name": "^_^", "category": 0, "post_count": 3000},
        {"name": "ganyu_(genshin_impact)", "category": 4, "post_count": 9000},
    ])
    db.add_aliases([("redhead", "red_hair"), ("sakura", "cherry_blossoms")])
    db.set_pack_category("red_hair", "CHARACTER_RELATED", "hair", 1, "human")
    db.set_pack_category("temple", "ENVIRONMENT", "architecture", 1, "human")
    db.set_pack_category("cherry_blossoms", "ENVIRONMENT", "nature", 1, "human")
    db.set_pack_category("from_above", "COMPOSITION", "angle", 1, "human")


def test_split_weights():
    plain, w = split_weights("一个女孩, (red hair:1.2), (sakura: 0.8) in spring")
    assert w == [("red hair", 1.2), ("sakura", 0.8)]
    assert plain == "一个女孩, red hair, sakura in spring"


def test_idea_to_tags_snaps_orders_and_keeps_weights(server, tmp_path):
    db = TagDB(tmp_path / "t.sqlite")
    _fill(db)
    server.idea_tags = ["temple", "from_above", "cherry_blossoms", "redhead", "1girl", "hakurei_reimu", "touhou",
                        "masterpiece", "glowing_dragon_unicorn", "Solo", "^_^", "ganyu_(genshin_impact)"]
    p = make_provider("ollama", "m", base_url=server.url, retry=RetryPolicy(attempts=2, base_delay=0.001))
    calls = []

    def suggest(term):  # stands in for the search index's typo-tolerant/semantic suggest
        calls.append(term)
        return []

    res = idea_to_tags("一个红发女孩在寺庙里, (sakura:1.3)", p, db, snapper=TagSnapper(db, suggest=suggest))
    assert server.requests[-1]["format"]["properties"]["tags"]["type"] == "array"
    assert "一个红发女孩在寺庙里" in server.requests[-1]["messages"][-1]["content"]
    tags = [t["tag"] for t in res.tags]
    assert tags == ["1girl", "solo", "hakurei_reimu", "ganyu_(genshin_impact)", "touhou", "red_hair", "cherry_blossoms",
                    "temple", "from_above", "^_^", "masterpiece"]
    assert res.dropped == ["glowing_dragon_unicorn"] and calls == ["glowing dragon unicorn"]
    assert ("redhead", "red_hair") in res.replaced and ("sakura", "cherry_blossoms") in res.replaced
    assert res.prompt == ("1girl, solo, hakurei reimu, ganyu \\(genshin impact\\), touhou, red hair, "
                          "(cherry blossoms:1.3), temple, from above, ^_^, masterpiece")
    assert res.usage["requests"] == 1


def test_snapper_uses_nearest_from_suggest(tmp_path):
    db = TagDB(tmp_path / "t.sqlite")
    _fill(db)
    hits = {"temple gatez": [{"tag": "temple", "reason": "fuzzy"}], "temp": [{"tag": "temple", "reason": "prefix"}]}
    s = TagSnapper(db, suggest=lambda t: hits.get(t, []))
    assert s.snap("temple_gatez").tag == "temple" and s.snap("temple_gatez").how == "nearest"
    assert s.snap("temp").tag is None  # a bare prefix is another tag, not a correction
    assert s.snap("Red Hair").how == "exact"


def test_prompt_cli(server, tmp_path, capsys):
    db = TagDB(tmp_path / "t.sqlite")
    _fill(db)
    db.close()
    rc = cli(["prompt", "idea", "a red haired girl at a temple", "--provider", "ollama", "--base-url", server.url,
              "--model", "m", "--db", str(tmp_path / "t.sqlite"), "--json"])
    assert rc == 0
    out = json.loads(capsys.readouterr().out)
    assert out["prompt"] == "red hair, temple"


def test_nodes_registered_without_key_inputs_and_run(comfy_pack, server, monkeypatch):
    nodes = comfy_pack.NODE_CLASS_MAPPINGS
    for name in ("TagLoomCategorizeTags", "TagLoomDescribeTags", "TagLoomIdeaToTags"):
        spec = nodes[name].INPUT_TYPES()
        names = [k for part in spec.values() for k in part]
        assert not [n for n in names if "key" in n.lower() or "token" in n.lower()], names
    db = TagDB()  # the default database of the (stubbed) ComfyUI user folder
    _fill(db)
    db.close()
    prompt, report, tags_json = nodes["TagLoomIdeaToTags"]().run("a girl", "ollama", server.url, "m", 30, False, 0)
    assert prompt == "red hair, temple" and json.loads(tags_json)["tags"][0]["tag"] == "red_hair"
    (summary,) = nodes["TagLoomCategorizeTags"]().run("ollama", server.url, "m", 50, 1, 0)
    s = json.loads(summary)
    assert s["tiers"][0]["answered"] == 3  # the uncategorized general tags: 1girl, solo, ^_^
    (summary,) = nodes["TagLoomDescribeTags"]().run("ollama", server.url, "m", 25, 1, 2)
    assert json.loads(summary)["tiers"][0]["answered"] == 2
    # the job unloads the model once at the end (keep_alive 0), not per batch
    assert [c["keep_alive"] for c in server.generate_calls] == [0, 0]


def test_categorize_node_plan_auto(comfy_pack, server, monkeypatch):
    """The node's appended `plan` input runs the four-step plan; its summary has each step and the
    coverage change."""
    db = TagDB()
    _fill(db)
    db.close()
    spec = comfy_pack.NODE_CLASS_MAPPINGS["TagLoomCategorizeTags"].INPUT_TYPES()
    assert list(spec["optional"])[-1] == "plan"  # appended last: saved workflows keep their widgets
    (summary,) = comfy_pack.NODE_CLASS_MAPPINGS["TagLoomCategorizeTags"]().run(
        "ollama", server.url, "m", 50, 1, 0, "", False, 120.0, "auto")
    s = json.loads(summary)
    assert s["plan"] == "auto" and [t["step"] for t in s["tiers"]] == ["1 popular", "3 rest", "4 re-ask"]
    assert s["coverage"].startswith("coverage: 57.1% -> 100.0% by count")  # 3 of 7 general tags were pending


def test_categorize_node_stops_on_cancel(comfy_pack, comfy, server):
    import comfy_stub

    db = TagDB()
    db.upsert_tags([{"name": f"tag_{i}", "category": 0} for i in range(10)])
    db.close()
    comfy_stub.STATE.interrupt = True
    with pytest.raises(comfy_stub.InterruptProcessingException):
        comfy_pack.NODE_CLASS_MAPPINGS["TagLoomCategorizeTags"]().run("ollama", server.url, "m", 2, 1, 0)
    assert not server.requests


def test_snapper_with_the_real_search_engine(tmp_path):
    """Default snapping goes through tagloom.search.suggest (classic typo-tolerant completion)."""
    pytest.importorskip("tagloom.search")
    db = TagDB(tmp_path / "t.sqlite")
    _fill(db)
    db.upsert_tags([{"name": "twintails", "category": 0, "post_count": 500000}])
    s = TagSnapper(db)
    snap = s.snap("twintials")
    assert (snap.tag, snap.how) == ("twintails", "nearest")
    assert s.snap("sakura").how == "alias" and s.snap("sakura").tag == "cherry_blossoms"
    assert s.snap("zzqqxx_nothing").tag is None
