"""Helpers for the autocomplete tests: a small real tag database and a real aiohttp server on
127.0.0.1 (in a background thread) that serves TagLoom's routes plus, optionally, static folders of
the repository and a test page."""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path

# name, category (Danbooru id), post count, aliases
TAGS = [
    ("1girl", 0, 6008644, ["1girls", "sole_female"]),
    ("solo", 0, 5100000, []),
    ("long_hair", 0, 4300000, ["longhair"]),
    ("long_sleeves", 0, 1500000, []),
    ("school_uniform", 0, 1000000, ["seifuku"]),
    ("twintails", 0, 900000, ["twin_tails", "pigtails"]),
    ("fox_girl", 0, 70000, ["kitsune", "foxgirl"]),
    ("sunset", 0, 120000, []),
    (":d", 0, 900000, []),
    ("^_^", 0, 60000, []),
    ("hatsune_miku", 4, 150000, ["miku"]),
    ("ganyu_(genshin_impact)", 4, 20000, ["ganyu"]),
    ("genshin_impact", 3, 500000, []),
    ("wlop", 1, 900, []),
    ("highres", 5, 4000000, []),
]


def make_tag_db(path: Path | None = None) -> Path:
    """Write TAGS into a TagDB (at the default path under TAGLOOM_HOME when ``path`` is None)."""
    from tagloom.tags import TagDB

    db = TagDB(path)
    try:
        db.upsert_tags({"name": n, "category": c, "post_count": p} for n, c, p, _ in TAGS)
        db.add_aliases((a, n) for n, _, _, aliases in TAGS for a in aliases)
        db.add_translations([("twintails", "zh", "双马尾")])
        return db.path
    finally:
        db.close()


class Server:
    """A real aiohttp app on 127.0.0.1 (port chosen by the OS) running in its own thread."""

    def __init__(self, static: dict[str, Path] | None = None, pages: dict[str, str] | None = None):
        self.static = static or {}
        self.pages = pages or {}
        self.url = ""
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _app(self):
        from aiohttp import web

        from tagloom.server import add_routes

        routes = web.RouteTableDef()
        add_routes(routes)  # the same discovery ComfyUI's PromptServer goes through
        app = web.Application()
        app.add_routes(routes)
        for prefix, folder in self.static.items():
            app.router.add_static(prefix, str(folder))
        for path, html in self.pages.items():
            async def page(_request, html=html):
                return web.Response(text=html, content_type="text/html")

            app.router.add_get(path, page)
        return app

    def _run(self):
        from aiohttp import web

        asyncio.set_event_loop(self._loop)
        runner = web.AppRunner(self._app())
        self._loop.run_until_complete(runner.setup())
        site = web.TCPSite(runner, "127.0.0.1", 0)
        self._loop.run_until_complete(site.start())
        port = site._server.sockets[0].getsockname()[1]
        self.url = f"http://127.0.0.1:{port}"
        self._runner = runner
        self._ready.set()
        self._loop.run_forever()
        self._loop.run_until_complete(runner.cleanup())
        self._loop.close()

    def __enter__(self):
        self._thread.start()
        if not self._ready.wait(20):
            raise RuntimeError("test aiohttp server did not start")
        return self

    def __exit__(self, *exc):
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
