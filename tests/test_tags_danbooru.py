"""The Danbooru API importer and `tagloom tags fetch`, against a real aiohttp server on 127.0.0.1
started by the test. The server implements the parts of Danbooru's API we use: id-cursor paging
(``page=a<id>``), ``limit``, and the fields of /tags.json, /tag_aliases.json and /wiki_pages.json;
it can answer 429 (rate limited) or 500 on demand."""

from __future__ import annotations

import asyncio
import threading

import pytest

from tagloom.cli import main
from tagloom.errors import TagLoomError
from tagloom.tags import TagDB
from tagloom.tags.danbooru import DanbooruClient, import_api, wiki_summary

TAGS = [
    {"id": 1, "name": "1girl", "post_count": 6008644, "category": 0, "is_deprecated": False},
    {"id": 2, "name": "long_hair", "post_count": 4350743, "category": 0, "is_deprecated": False},
    {"id": 5, "name": "twintails", "post_count": 904712, "category": 0, "is_deprecated": False},
    {"id": 7, "name": "hatsune_miku", "post_count": 150000, "category": 4, "is_deprecated": False},
    {"id": 9, "name": "old_tag", "post_count": 3, "category": 0, "is_deprecated": True},
]
ALIASES = [
    {"id": 3, "antecedent_name": "twin_tails", "consequent_name": "twintails", "status": "active"},
    {"id": 4, "antecedent_name": "miku", "consequent_name": "hatsune_miku", "status": "active"},
    {"id": 6, "antecedent_name": "pigtails", "consequent_name": "twintails", "status": "deleted"},
]
WIKI = [
    {"id": 10, "title": "twintails", "is_deleted": False,
     "other_names": ["ツインテール", "双马尾"],
     "body": "h4. Twintails\n\nA hairstyle of two [[ponytail|ponytails]], one on each side of the head.\n\nh4. See also\n\n* [[ponytail]]"},
    {"id": 11, "title": "not_a_tag_here", "is_deleted": False, "body": "Something.", "other_names": ["何か"]},
]


class FakeDanbooru:
    def __init__(self, tmp_path):
        self.log: list[str] = []
        self.fail_status: int | None = None
        self.fail_after = 0
        self.rate_limit_once = False
        self.files = tmp_path
        self.ranges: list[str] = []
        self.loop = asyncio.new_event_loop()
        self.ready = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _page(self, rows, request):
        from aiohttp import web

        self.log.append(request.path_qs)
        if self.rate_limit_once:
            self.rate_limit_once = False
            return web.Response(status=429, headers={"Retry-After": "0"})
        if self.fail_status and len(self.log) > self.fail_after:
            return web.Response(status=self.fail_status)
        limit = int(request.query.get("limit", 20))
        page = request.query.get("page", "a0")
        after = int(page[1:]) if page.startswith("a") else 0
        chosen = sorted((r for r in rows if r["id"] > after), key=lambda r: r["id"])[:limit]
        return web.json_response(sorted(chosen, key=lambda r: -r["id"]))  # Danbooru answers newest first

    def _app(self):
        from aiohttp import web

        app = web.Application()
        for path, rows in (("/tags.json", TAGS), ("/tag_aliases.json", ALIASES), ("/wiki_pages.json", WIKI)):
            async def handler(request, rows=rows):
                return self._page(rows, request)

            app.router.add_get(path, handler)

        async def bad_json(request):
            return web.Response(text="<html>maintenance</html>", content_type="text/html")

        app.router.add_get("/broken/tags.json", bad_json)

        async def files(request):
            self.ranges.append(request.headers.get("Range", ""))
            return web.FileResponse(self.files / request.match_info["name"])

        app.router.add_get("/files/{name}", files)
        return app

    def _run(self):
        from aiohttp import web

        asyncio.set_event_loop(self.loop)
        runner = web.AppRunner(self._app())
        self.loop.run_until_complete(runner.setup())
        site = web.TCPSite(runner, "127.0.0.1", 0)
        self.loop.run_until_complete(site.start())
        self.url = f"http://127.0.0.1:{site._server.sockets[0].getsockname()[1]}"
        self.ready.set()
        self.loop.run_forever()
        self.loop.run_until_complete(runner.cleanup())

    def __enter__(self):
        self.thread.start()
        assert self.ready.wait(20)
        return self

    def __exit__(self, *exc):
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)


@pytest.fixture
def server(tmp_path):
    with FakeDanbooru(tmp_path) as s:
        yield s


def client(url, **kw):
    return DanbooruClient(url, min_interval=0.0, backoff=0.01, **kw)


def test_imports_tags_aliases_and_descriptions_paged(server, tmp_path):
    db = TagDB(tmp_path / "t.sqlite")
    counts = import_api(db, server.url, client=client(server.url), page_limit=2)
    assert counts["tags"] == 5 and counts["aliases"] == 3 and counts["wiki"] == 2
    assert db.count() == 4  # the deprecated tag is skipped
    t = db.get("twin_tails")
    assert t["name"] == "twintails" and t["post_count"] == 904712
    assert "pigtails" not in t["aliases"]  # a deleted alias
    assert t["description"] == "A hairstyle of two ponytails, one on each side of the head."
    assert t["translations"] == {"ja": ["ツインテール"], "zh": ["双马尾"]}  # from the wiki's other_names
    assert db.get("not_a_tag_here") is None  # wiki pages never create tags
    tag_pages = [p for p in server.log if p.startswith("/tags.json")]
    assert len(tag_pages) == 3 and "page=a0" in tag_pages[0] and "page=a2" in tag_pages[1] and "page=a7" in tag_pages[2]


def test_rate_limited_request_is_retried(server, tmp_path):
    server.rate_limit_once = True
    db = TagDB(tmp_path / "t.sqlite")
    c = client(server.url)
    import_api(db, server.url, endpoints=["tags"], client=c)
    assert db.count() == 4 and c.requests == 2


def test_resumes_after_a_failure_without_refetching(server, tmp_path):
    db = TagDB(tmp_path / "t.sqlite")
    server.fail_status, server.fail_after = 500, 1  # the second request and all after it fail
    with pytest.raises(TagLoomError, match="HTTP 500"):
        import_api(db, server.url, endpoints=["tags"], client=client(server.url, retries=1), page_limit=2)
    assert db.count() == 2  # the first page was kept
    server.fail_status = None
    server.log.clear()
    import_api(db, server.url, endpoints=["tags"], client=client(server.url), page_limit=2)
    assert db.count() == 4
    assert "page=a2" in server.log[0]  # resumed after the last committed page
    server.log.clear()
    counts = import_api(db, server.url, endpoints=["tags"], client=client(server.url), page_limit=2)
    assert counts["tags"] == 0 and len(server.log) == 1  # nothing new: one request


def test_dead_server_and_bad_json_are_clear_errors(server, tmp_path):
    db = TagDB(tmp_path / "t.sqlite")
    with pytest.raises(TagLoomError, match="invalid JSON"):
        import_api(db, server.url + "/broken", endpoints=["tags"], client=client(server.url + "/broken"))
    with pytest.raises(TagLoomError, match="cannot reach"):
        import_api(db, "http://127.0.0.1:9", endpoints=["tags"], client=client("http://127.0.0.1:9", retries=0))


def test_wiki_summary_strips_dtext():
    body = 'h1. Title\n\nA [[cat_ears|cat]] with "a link":https://x.y and [b]bold[/b].\n\n* list'
    assert wiki_summary(body) == "A cat with a link and bold."
    assert wiki_summary("") == ""


def test_cli_danbooru_and_fetch(server, tmp_path, tagloom_home, capsys):
    db_path = tmp_path / "cli.sqlite"
    assert main(["tags", "danbooru", "--base-url", server.url, "--interval", "0", "--db", str(db_path)]) == 0
    assert TagDB(db_path).get("miku")["name"] == "hatsune_miku"

    full = 'twintails,0,904712,"/tt,twintail"\n' + "".join(f"tag_{i},0,{1000 - i},\n" for i in range(500))
    (tmp_path / "danbooru.csv").write_text(full, encoding="utf-8")
    (tmp_path / "zh.csv").write_text('twintails,0,"双马尾"\n', encoding="utf-8")
    # A download cut short by an earlier run: fetch must resume it with a Range request.
    part = tagloom_home / "downloads" / "danbooru.csv.part"
    part.parent.mkdir(parents=True)
    part.write_bytes(full.encode()[:1000])
    rc = main(["tags", "fetch", "--url", f"{server.url}/files/danbooru.csv", "--translations", f"{server.url}/files/zh.csv",
               "--db", str(db_path)])
    assert rc == 0
    assert server.ranges[0] == "bytes=1000-"
    assert (tagloom_home / "downloads" / "danbooru.csv").read_text(encoding="utf-8") == full
    db = TagDB(db_path)
    assert db.get("tag_499")["post_count"] == 501 and db.get("/tt")["translations"]["zh"] == ["双马尾"]
    assert main(["tags", "fetch", "--url", f"{server.url}/files/missing.csv", "--db", str(db_path)]) == 2
    assert "HTTP 404" in capsys.readouterr().err
