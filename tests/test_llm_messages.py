"""What a user sees when the LLM server is not there, lacks the model, or no model was named
(issue 11), and where keys go (issue 14). Real HTTP on 127.0.0.1: a closed port for the dead
server; the FAKE Ollama / OpenAI servers of tests/llm_servers.py for the 404 answers (Ollama
itself cannot be installed here)."""

from __future__ import annotations

import json

import pytest

from llm_servers import FakeOllama, FakeOpenAI, free_port
from tagloom.cli import main as cli
from tagloom.llm.providers import LLMError, RetryPolicy, make_provider
from tagloom.llm.pipeline import single_tier
from tagloom.llm.tiers import load_tiers


class _NoSleep(RetryPolicy):
    def __init__(self):
        super().__init__(attempts=5)
        self.sleeps = []
        self.sleep = self.sleeps.append


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


SCHEMA = {"type": "object", "properties": {"a": {"type": "string"}}, "required": ["a"]}


@pytest.mark.parametrize("kind,hint", [("ollama", "`ollama serve`"), ("openai", "start the server"),
                                       ("llamacpp", "llama-server")])
def test_a_dead_server_fails_at_once_saying_to_start_it(kind, hint):
    url = f"http://127.0.0.1:{free_port()}" + ("" if kind == "ollama" else "/v1")
    retry = _NoSleep()
    p = make_provider(kind, None, base_url=url, retry=retry)
    with pytest.raises(LLMError) as e:
        p.chat_json("s", "u", SCHEMA)
    assert retry.sleeps == []  # no retries: a refused connection is not transient
    msg = str(e.value)
    assert "is the server running?" in msg and url in msg
    if kind != "openai":
        assert hint in msg
    else:
        assert "check the URL" in msg or hint in msg


def test_the_cli_reports_a_dead_ollama_in_one_line(capsys):
    rc = cli(["prompt", "idea", "a girl", "--base-url", f"http://127.0.0.1:{free_port()}"])
    err = capsys.readouterr().err
    assert rc == 2 and "is the server running? (`ollama serve`)" in err and "qwen2.5:7b-instruct" in err


def test_a_missing_ollama_model_names_the_pull_command(ollama_server):
    ollama_server.models = {"llama3.2:3b"}
    p = make_provider("ollama", "qwen2.5:7b-instruct", base_url=ollama_server.url, retry=_NoSleep())
    with pytest.raises(LLMError) as e:
        p.chat_json("s", "u", SCHEMA)
    assert "`ollama pull qwen2.5:7b-instruct`" in str(e.value)


def test_a_missing_openai_compatible_model_says_so(openai_server):
    openai_server.models = {"served-model"}
    p = make_provider("vllm", "Qwen/Qwen2.5-7B-Instruct", base_url=openai_server.url + "/v1", retry=_NoSleep())
    with pytest.raises(LLMError) as e:
        p.chat_json("s", "u", SCHEMA)
    assert "has no model 'Qwen/Qwen2.5-7B-Instruct'" in str(e.value) and "vllm serve" in str(e.value)


def test_every_provider_has_a_documented_default_model():
    assert single_tier("ollama").model == "qwen2.5:7b-instruct"
    assert single_tier("openai").model == "gpt-4o-mini"
    assert make_provider("ollama", "").model == "qwen2.5:7b-instruct"


def test_the_readme_dry_run_plans_with_a_real_model(tmp_path, capsys):
    from tagloom.tags.db import TagDB

    db = tmp_path / "tags.sqlite"
    with TagDB(db) as d:
        d.upsert_tags([{"name": "red_hair", "category": 0, "post_count": 500}])
    assert cli(["categorize", "--provider", "ollama", "--model", "qwen2.5:7b-instruct", "--dry-run", "--db", str(db)]) == 0
    assert cli(["categorize", "--dry-run", "--db", str(db)]) == 0
    out = capsys.readouterr().out
    assert "ollama:qwen2.5:7b-instruct" in out and "ollama: " not in out


def test_tiers_files_accept_every_registered_name_and_default_the_model(tmp_path):
    f = tmp_path / "tiers.toml"
    f.write_text('[[tier]]\nprovider = "vllm"\nmodel = "m"\nmin_posts = 100\n[[tier]]\nprovider = "ollama"\n')
    tiers = load_tiers(f)
    assert [t.provider for t in tiers] == ["vllm", "ollama"] and tiers[1].model == "qwen2.5:7b-instruct"
    f.write_text('[[tier]]\nprovider = "gemini"\n')
    with pytest.raises(Exception, match="provider must be one of ollama, openai"):
        load_tiers(f)


def test_the_openai_key_goes_only_to_openai(openai_server, monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-not-for-your-lan-server")
    monkeypatch.setenv("MY_SERVER_KEY", "sk-for-my-server")
    local = make_provider("openai", "m", base_url=openai_server.url + "/v1", retry=_NoSleep())
    assert local.api_key_env is None
    local.chat_json("s", "Tags:\nsword", {"type": "object", "properties": {"sword": {"type": "string"}}, "required": ["sword"]})
    assert openai_server.headers[-1]["Authorization"] == "Bearer no-key"
    named = make_provider("openai", "m", base_url=openai_server.url + "/v1", api_key_env="MY_SERVER_KEY", retry=_NoSleep())
    named.chat_json("s", "Tags:\nsword", {"type": "object", "properties": {"sword": {"type": "string"}}, "required": ["sword"]})
    assert openai_server.headers[-1]["Authorization"] == "Bearer sk-for-my-server"
    assert make_provider("openai", "m").api_key_env == "OPENAI_API_KEY"  # OpenAI's own endpoint (no request made)


def test_timeout_reaches_the_provider(tmp_path):
    from tagloom.cli import build_parser
    from tagloom.cli.categorize import tiers_from_args

    args = build_parser().parse_args(["categorize", "--timeout", "7", "--dry-run"])
    assert tiers_from_args(args)[0].timeout == 7.0
    f = tmp_path / "t.json"
    f.write_text(json.dumps({"tier": [{"provider": "ollama", "timeout": 300}]}))
    args = build_parser().parse_args(["categorize", "--tiers", str(f), "--timeout", "9"])
    assert tiers_from_args(args)[0].timeout == 9.0


def test_tokens_of_failed_attempts_are_counted(tmp_path, openai_server):
    """A model that answers prose every time: the batch fails, but every attempt's tokens are in the
    run's usage and the ledger (a paid run must never cost more than it reports)."""
    from tagloom.llm import jobs
    from tagloom.tags.db import TagDB
    from tagloom.tags.llm_ledger import Ledger

    openai_server.garbage = True
    db = TagDB(tmp_path / "tags.sqlite")
    db.upsert_tags([{"name": "sword", "category": 0, "post_count": 10}])
    p = make_provider("openai", "m", base_url=openai_server.url + "/v1", retry=_NoSleep())
    rep = jobs.run_task(db, jobs.CATEGORIZE, p, ["sword"], batch_size=1, single_attempts=0)
    attempts = len(openai_server.requests)
    assert rep.failed == ["sword"] and attempts == 5
    assert rep.usage.requests == attempts and rep.usage.prompt_tokens == 11 * attempts
    assert rep.usage.completion_tokens == 7 * attempts
    assert Ledger(db).usage("categorize")["prompt_tokens"] == 11 * attempts
    db.close()
