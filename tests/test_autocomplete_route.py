"""GET /tagloom/autocomplete served by a real aiohttp app on 127.0.0.1 over a small real tag DB."""

from __future__ import annotations

import json
import threading
import urllib.error
import urllib.parse
import urllib.request

import pytest
from autocomplete_fixtures import Server, make_tag_db

from tagloom.server import autocomplete as ac


def _get(url: str):
    try:
        with urllib.request.urlopen(url, timeout=30) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read() or b"null")


@pytest.fixture
def server():
    make_tag_db()  # at the default path under this test's TAGLOOM_HOME, as ComfyUI would find it
    with Server() as s:
        yield s


def _q(server, **params):
    return _get(f"{server.url}/tagloom/autocomplete?{urllib.parse.urlencode(params)}")


def test_prefix_alias_and_fields(server):
    status, body = _q(server, q="long", limit=5)
    assert status == 200
    tags = [s["tag"] for s in body["suggestions"]]
    assert tags[:2] == ["long_hair", "long_sleeves"]  # ranked by post count
    assert set(body["suggestions"][0]) == {"tag", "category", "post_count", "alias", "reason", "score"}
    assert body["suggestions"][0]["category"] == "general"
    assert body["suggestions"][0]["post_count"] == 4300000

    status, body = _q(server, q="kitsu")
    hit = body["suggestions"][0]
    assert (hit["tag"], hit["alias"]) == ("fox_girl", "kitsune")

    status, body = _q(server, q="miku")
    assert body["suggestions"][0]["tag"] == "hatsune_miku"
    assert body["suggestions"][0]["category"] == "character"


def test_limit_is_clamped_and_validated(server):
    status, body = _q(server, q="s", limit=1)
    assert status == 200 and len(body["suggestions"]) == 1
    status, body = _q(server, q="s", limit=100000)
    assert status == 200 and len(body["suggestions"]) <= ac.MAX_LIMIT
    for bad in ({"q": "a", "limit": "ten"}, {"q": "a", "limit": "0"}, {"q": "a" * 201},
                {"q": "a", "semantic": "maybe"}):
        status, body = _q(server, **bad)
        assert status == 400, bad
        assert body["error"]


def test_empty_query_and_unknown_paths(server):
    assert _q(server, q="   ") == (200, {"q": "", "suggestions": []})
    with pytest.raises(urllib.error.HTTPError) as e:
        urllib.request.urlopen(f"{server.url}/tagloom/", timeout=10)
    assert e.value.code == 404
    req = urllib.request.Request(f"{server.url}/tagloom/autocomplete?q=a", method="POST")
    with pytest.raises(urllib.error.HTTPError) as e:
        urllib.request.urlopen(req, timeout=10)
    assert e.value.code == 405


def test_semantic_without_index_falls_back_with_warning(server):
    status, body = _q(server, q="twin", semantic="on")
    assert status == 200
    assert body["suggestions"][0]["tag"] == "twintails"
    assert "semantic" in body.get("warning", "")
    status, body = _q(server, q="twin", semantic="off")
    assert status == 200 and "warning" not in body


def test_empty_database_says_how_to_fill_it(tagloom_home):
    with Server() as s:  # no make_tag_db: the DB file is created empty on first use
        status, body = _q(s, q="girl")
    assert status == 200 and body["suggestions"] == []
    assert "tagloom tags" in body["warning"]


def test_search_runs_off_the_event_loop(server, monkeypatch):
    """The handler must never run the (blocking) search on the server's event-loop thread."""
    import tagloom.search

    real = tagloom.search.suggest
    threads = []

    def recording(*a, **kw):
        threads.append(threading.current_thread().name)
        return real(*a, **kw)

    monkeypatch.setattr(tagloom.search, "suggest", recording)
    status, body = _q(server, q="1gi")
    assert status == 200 and body["suggestions"][0]["tag"] == "1girl"
    assert threads and all(t.startswith("tagloom-autocomplete") for t in threads)


def test_parse_params_is_shared_with_the_webui():
    assert ac.parse_params({"q": " sol ", "limit": "3", "semantic": "1"}) == ("sol", 3, True)
    assert ac.parse_params({}) == ("", ac.DEFAULT_LIMIT, None)
    assert ac.parse_params({"q": "x", "semantic": "off"})[2] is False
