"""``tagloom serve``: the standalone aiohttp server, started as a real subprocess on a free port of
127.0.0.1 and queried over real HTTP."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request

import pytest
from autocomplete_fixtures import make_tag_db
from tests_paths import REPO


def _get(url: str, method: str = "GET") -> tuple[int, str]:
    req = urllib.request.Request(url, method=method)
    try:
        with urllib.request.urlopen(req, timeout=60) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


@pytest.fixture
def server(tmp_path, tagloom_home):
    db = make_tag_db(tmp_path / "tags.sqlite")
    env = dict(os.environ, TAGLOOM_HOME=str(tagloom_home), PYTHONUNBUFFERED="1")
    proc = subprocess.Popen([sys.executable, "-m", "tagloom", "serve", "--port", "0", "--db", str(db)], cwd=REPO, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        line = proc.stdout.readline()  # printed once the socket listens
        assert "serving http://127.0.0.1:" in line, line + (proc.stdout.read() if proc.poll() is not None else "")
        url = line.split("serving ", 1)[1].split()[0]
        yield proc, url
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)


def test_serve_answers_over_http_and_stops(server):
    proc, url = server
    assert url.endswith("/tagloom/autocomplete")
    status, body = _get(url + "?q=twin&limit=3&semantic=off")
    assert status == 200, body
    answer = json.loads(body)
    assert answer["q"] == "twin" and answer["suggestions"][0]["tag"] == "twintails"
    assert set(answer["suggestions"][0]) == {"tag", "category", "post_count", "alias", "reason", "score"}
    status, body = _get(url + "?q=" + urllib.request.quote("双马") + "&semantic=off")
    assert status == 200 and json.loads(body)["suggestions"][0]["tag"] == "twintails"
    assert json.loads(_get(url + "?q=")[1]) == {"q": "", "suggestions": []}
    # The same checks and limits as the ComfyUI and WebUI routes.
    for query, message in (("q=a&limit=abc", "limit must be an integer"), ("q=a&limit=0", "at least 1"),
                           ("q=a&semantic=maybe", "semantic must be one of"), ("q=" + "a" * 201, "longer than 200")):
        status, body = _get(f"{url}?{query}")
        assert status == 400 and message in json.loads(body)["error"], (query, body)
    status, body = _get(url + "?q=1&limit=500&semantic=off")
    assert status == 200 and len(json.loads(body)["suggestions"]) <= 50
    base = url.rsplit("/tagloom/", 1)[0]
    assert _get(base + "/")[0] == 404
    assert _get(base + "/tagloom/other")[0] == 404
    assert _get(url + "?q=a", method="POST")[0] == 405
    proc.send_signal(signal.SIGTERM)  # a clean stop: the runner is cleaned up, exit status 0
    code = proc.wait(20)
    assert code == 0 or sys.platform == "win32"  # (Windows has no SIGTERM: terminate() is a kill)
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", int(base.rsplit(":", 1)[1])), timeout=2).close()


def test_serve_refuses_a_port_in_use(tmp_path, tagloom_home):
    db = make_tag_db(tmp_path / "tags.sqlite")
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        env = dict(os.environ, TAGLOOM_HOME=str(tagloom_home))
        t = time.monotonic()
        r = subprocess.run([sys.executable, "-m", "tagloom", "serve", "--port", str(port), "--db", str(db)], cwd=REPO,
                           env=env, capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and f"cannot listen on 127.0.0.1:{port}" in r.stderr, r.stderr
    assert time.monotonic() - t < 60


def test_serve_help_and_port_check():
    from tagloom.cli import build_parser

    parser = build_parser()
    args = parser.parse_args(["serve"])
    assert (args.host, args.port, args.db) == ("127.0.0.1", 8711, None)
    with pytest.raises(SystemExit):
        parser.parse_args(["serve", "--port", "70000"])
