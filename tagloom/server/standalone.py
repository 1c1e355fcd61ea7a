"""``tagloom serve``: the autocomplete route on a small aiohttp server of its own, for scripts and
front ends other than ComfyUI and the WebUI.

It serves exactly what the ComfyUI adapter serves: ``GET /tagloom/autocomplete?q=&limit=&semantic=``
through the same handler (``autocomplete.make_handler``: the same parameter checks, limits, worker
threads and answers) and nothing else (any other path is a 404). No authentication: it binds
127.0.0.1 unless told otherwise. The tag index starts loading when the server starts, not on the
first query. (No ``add_routes`` here: this module is no route for the hosts' discovery.)
"""

from __future__ import annotations

import asyncio
import logging
import signal
import sys
import threading
from pathlib import Path

from tagloom.server.autocomplete import ROUTE, _pool, make_handler

log = logging.getLogger("tagloom")

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8711
# A GET with a query string: nothing a client sends needs more than this.
MAX_REQUEST_BYTES = 64 * 1024


def make_app(db_path: str | Path | None = None, warm: bool = True):
    """The aiohttp application (``db_path`` None: the database under ``config.data_dir()``)."""
    from aiohttp import web

    app = web.Application(client_max_size=MAX_REQUEST_BYTES)
    app.router.add_get(ROUTE, make_handler(db_path))
    if warm:
        async def warm_up(_app) -> None:
            # Load the tag index in the route's worker pool while the server already answers.
            asyncio.get_running_loop().run_in_executor(_pool(), _warm, db_path)

        app.on_startup.append(warm_up)
    return app


def _warm(db_path) -> None:
    try:
        from tagloom.search.engine import get_engine

        get_engine(db_path)
    except Exception:  # noqa: BLE001 - the first query reports it properly
        log.exception("tagloom serve: loading the tag index failed")


def url_for(host: str, port: int) -> str:
    shown = f"[{host}]" if ":" in host else host
    return f"http://{shown}:{port}{ROUTE}"


async def serve(host: str = DEFAULT_HOST, port: int = DEFAULT_PORT, db_path=None,
                started=None, stop: asyncio.Event | None = None) -> None:
    """Serve until ``stop`` is set (or SIGINT/SIGTERM). ``started(host, port)`` is called once the
    socket listens (``port`` 0 picks a free one; the callback gets the real port)."""
    from aiohttp import web

    runner = web.AppRunner(make_app(db_path), access_log=None)
    await runner.setup()
    try:
        site = web.TCPSite(runner, host, port)
        await site.start()
        bound = runner.addresses[0]
        if started is not None:
            started(host, int(bound[1]))
        stop = stop or asyncio.Event()
        loop = asyncio.get_running_loop()
        if threading.current_thread() is threading.main_thread() and sys.platform != "win32":
            for sig in (signal.SIGINT, signal.SIGTERM):
                loop.add_signal_handler(sig, stop.set)
        await stop.wait()
    finally:
        await runner.cleanup()


def run(host: str = DEFAULT_HOST, port: int = DEFAULT_PORT, db_path=None, out=sys.stdout) -> int:
    """Blocking: serve until interrupted; prints the URL (one line, flushed) once listening."""
    def started(h, p):
        print(f"tagloom: serving {url_for(h, p)} (Ctrl+C stops)", file=out, flush=True)
        if h not in ("127.0.0.1", "localhost", "::1"):
            print(f"tagloom: note: listening on {h} without authentication: anyone who can reach it can query it",
                  file=out, flush=True)

    try:
        asyncio.run(serve(host, port, db_path, started=started))
    except KeyboardInterrupt:
        pass
    return 0
