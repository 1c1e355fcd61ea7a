"""``GET /tagloom/autocomplete?q=&limit=&semantic=``: tag suggestions for the prompt-box popups.

Host-neutral on purpose: ``parse_params`` and ``autocomplete`` are plain functions that the WebUI's
FastAPI route (scripts/tagloom.py) calls too, so both hosts validate and answer the same way. The
aiohttp handler below is what ComfyUI's PromptServer (and the tests' aiohttp app) serve.

The search itself runs in a small thread pool, never on the event loop: a first query loads the tag
index (a second or so over 140k tags) and a semantic query may load an embedding model, and
ComfyUI's server loop also carries the websocket that drives the whole UI.

Answer: ``{"q": ..., "suggestions": [{tag, category, post_count, alias, reason, score}, ...]}``
plus ``"warning"`` when something the user can fix got in the way (no semantic index, empty tag
database), and ``"index": {"embedded", "total", "building"}`` when a semantic index exists and the
query may use it (a build fills it most popular first and it is searchable meanwhile: the popup
can say how far it is). Bad input is a 400 with ``{"error": ...}``; only this one path is served.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Mapping

log = logging.getLogger("tagloom")

ROUTE = "/tagloom/autocomplete"
MAX_QUERY_CHARS = 200  # a prompt word, not a prompt: longer input is a client bug or abuse
MAX_LIMIT = 50
DEFAULT_LIMIT = 10
# The fields the popup needs; the engine returns more (translations, ...), which stay server-side.
FIELDS = ("tag", "category", "post_count", "alias", "reason", "score")

_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}
_AUTO = {"", "auto", "default"}


class BadRequest(ValueError):
    """Invalid query parameters (answered with HTTP 400)."""


def parse_params(params: Mapping[str, Any]) -> tuple[str, int, bool | None]:
    """(query, limit, semantic) from query-string parameters, or BadRequest saying what is wrong.

    ``semantic``: 1/true/on -> True, 0/false/off -> False, absent/auto -> None (the server's setting).
    """
    q = str(params.get("q", "") or "")
    if len(q) > MAX_QUERY_CHARS:
        raise BadRequest(f"q is longer than {MAX_QUERY_CHARS} characters")
    if "\x00" in q:
        raise BadRequest("q contains a NUL character")
    raw_limit = params.get("limit")
    if raw_limit in (None, ""):
        limit = DEFAULT_LIMIT
    else:
        try:
            limit = int(str(raw_limit))
        except ValueError:
            raise BadRequest(f"limit must be an integer, got {str(raw_limit)[:20]!r}") from None
        if limit < 1:
            raise BadRequest("limit must be at least 1")
        limit = min(limit, MAX_LIMIT)  # clamp rather than refuse: a UI setting may be higher
    raw_sem = str(params.get("semantic", "") or "").strip().lower()
    if raw_sem in _TRUE:
        semantic: bool | None = True
    elif raw_sem in _FALSE:
        semantic = False
    elif raw_sem in _AUTO:
        semantic = None
    else:
        raise BadRequest(f"semantic must be one of on/off/auto, got {raw_sem[:20]!r}")
    return q.strip(), limit, semantic


def _slim(result: Mapping[str, Any]) -> dict:
    out = {k: result.get(k) for k in FIELDS}
    if result.get("span"):  # the last words of the phrase this row completes (engine.suggest)
        out["span"] = result["span"]
    return out


def autocomplete(q: str, limit: int = DEFAULT_LIMIT, semantic: bool | None = None, db_path=None) -> dict:
    """The answer for one query (blocking; call it from a worker thread).

    Asking for semantic results when no semantic index is built falls back to classic completion
    with a warning: the popup must keep working while the user has not run ``tagloom index build``.
    """
    from tagloom.errors import TagLoomError
    from tagloom.search import suggest

    answer: dict[str, Any] = {"q": q, "suggestions": []}
    if not q:
        return answer
    try:
        results = suggest(q, limit=limit, semantic=semantic, db_path=db_path)
    except TagLoomError as e:
        if not semantic:
            raise
        answer["warning"] = f"semantic search unavailable, showing classic completion: {e}"
        results = suggest(q, limit=limit, semantic=False, db_path=db_path)
    answer["suggestions"] = [_slim(r) for r in results]
    if semantic is not False:
        progress = _index_progress(db_path)
        if progress is not None:
            answer["index"] = progress
    if not results and _database_empty(db_path):
        answer["warning"] = "the tag database is empty: run `tagloom tags fetch` or `tagloom tags import FILE`"
    return answer


def _index_progress(db_path) -> dict | None:
    """How far the semantic index is (one stat of its STAMP; read when it moved), or None."""
    try:
        from tagloom.search.semantic import index_progress

        p = index_progress(db_path)
        if p is None:
            return None
        from tagloom.search.engine import get_engine

        total = get_engine(db_path).tag_count or p["total"]  # the database now (tags imported since count)
    except Exception:  # only a hint: never let it turn an answer into an error
        return None
    return {"embedded": p["embedded"], "total": total, "building": p["building"]}


def _database_empty(db_path) -> bool:
    try:
        from tagloom.search.engine import get_engine

        return len(get_engine(db_path).names) == 0
    except Exception:  # only a hint: never let it turn an answer into an error
        return False


_executor: ThreadPoolExecutor | None = None
_executor_lock = threading.Lock()


def _pool() -> ThreadPoolExecutor:
    # Our own two threads rather than the loop's default executor: a slow semantic query must not
    # queue behind (or hold up) ComfyUI's own executor work.
    global _executor
    with _executor_lock:
        if _executor is None:
            _executor = ThreadPoolExecutor(max_workers=2, thread_name_prefix="tagloom-autocomplete")
        return _executor


def make_handler(db_path=None):
    """An aiohttp handler; ``db_path`` None means the database under ``config.data_dir()``."""
    from aiohttp import web

    async def handle(request: "web.Request") -> "web.Response":
        try:
            q, limit, semantic = parse_params(request.query)
        except BadRequest as e:
            return web.json_response({"error": str(e)}, status=400)
        loop = asyncio.get_running_loop()
        try:
            answer = await loop.run_in_executor(_pool(), autocomplete, q, limit, semantic, db_path)
        except Exception as e:  # noqa: BLE001 - answer with a short message, log the traceback
            from tagloom.errors import TagLoomError

            if isinstance(e, TagLoomError):
                return web.json_response({"error": str(e)}, status=503)
            log.exception("tagloom autocomplete failed for %r", q)
            return web.json_response({"error": f"search failed: {type(e).__name__}"}, status=500)
        return web.json_response(answer)

    return handle


def add_routes(routes) -> None:
    routes.get(ROUTE)(make_handler())
