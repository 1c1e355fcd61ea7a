"""Import from the Danbooru JSON API: ``/tags.json``, ``/tag_aliases.json`` and ``/wiki_pages.json``
(descriptions, and the page's ``other_names`` as translations; tagloom/tags/wiki.py turns the DText
into text and keeps descriptions from other sources, such as ``tagloom describe``, unless
``overwrite``).

Paged by id cursor (``page=a<id>``: the records after an id), so a page is never skipped or repeated
when tags are added while we read; the cursor of each endpoint is saved in the database's ``meta``
table after every page is committed, so a run stopped at any point resumes where it stopped and a
later run fetches only what is new (``restart=True`` reads everything again). Requests are spaced by
``min_interval`` seconds (Danbooru asks clients to stay well under its limits) and retried with
back-off on 429/5xx and network errors, honouring ``Retry-After``.

An account is optional: ``DANBOORU_LOGIN`` and ``DANBOORU_API_KEY`` (environment or config.toml
``[secrets]``) are sent as HTTP basic auth and never logged.
"""

from __future__ import annotations

import base64
import json
import time
import urllib.error
import urllib.parse
import urllib.request
from typing import Callable

from tagloom import __version__, config
from tagloom.errors import CancelledError, TagLoomError
from tagloom.tags import wiki
from tagloom.tags.db import TagDB, canonical

DEFAULT_BASE = "https://danbooru.donmai.us"
PAGE_LIMIT = 1000
ENDPOINTS = ("tags", "aliases", "wiki")


class DanbooruClient:
    def __init__(self, base_url: str = DEFAULT_BASE, min_interval: float = 1.0, retries: int = 5, timeout: float = 30.0,
                 backoff: float = 2.0, sleep: Callable[[float], None] = time.sleep):
        self.base = base_url.rstrip("/")
        self.min_interval = min_interval
        self.retries = retries
        self.timeout = timeout
        self.backoff = backoff
        self._sleep = sleep
        self._last = 0.0
        self.requests = 0
        login = config.secret("DANBOORU_LOGIN", "danbooru_login")
        key = config.secret("DANBOORU_API_KEY", "danbooru_api_key")
        self._auth = "Basic " + base64.b64encode(f"{login}:{key}".encode()).decode() if login and key else None

    def get(self, path: str, params: dict) -> list:
        url = f"{self.base}{path}?{urllib.parse.urlencode(params)}"
        headers = {"User-Agent": f"TagLoom/{__version__}", "Accept": "application/json"}
        if self._auth:
            headers["Authorization"] = self._auth
        delay = self.backoff
        for attempt in range(self.retries + 1):
            wait = self._last + self.min_interval - time.monotonic()
            if wait > 0:
                self._sleep(wait)
            self._last = time.monotonic()
            self.requests += 1
            try:
                with urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=self.timeout) as r:
                    body = r.read()
            except urllib.error.HTTPError as e:
                if e.code in (429, 500, 502, 503, 504) and attempt < self.retries:
                    retry_after = e.headers.get("Retry-After") if e.headers else None
                    self._sleep(float(retry_after) if retry_after and retry_after.isdigit() else delay)
                    delay *= 2
                    continue
                raise TagLoomError(f"{self.base}{path}: HTTP {e.code} {e.reason}") from None
            except (urllib.error.URLError, TimeoutError, ConnectionError) as e:
                if attempt < self.retries:
                    self._sleep(delay)
                    delay *= 2
                    continue
                reason = getattr(e, "reason", e)
                raise TagLoomError(f"{self.base}{path}: cannot reach the server ({reason})") from None
            try:
                data = json.loads(body)
            except (json.JSONDecodeError, UnicodeDecodeError) as e:
                raise TagLoomError(f"{self.base}{path} (page {params.get('page')}): the server sent invalid JSON ({e})") from None
            if not isinstance(data, list):
                raise TagLoomError(f"{self.base}{path} (page {params.get('page')}): expected a JSON list, got {type(data).__name__}")
            return data
        raise AssertionError("unreachable")


def wiki_summary(body: str, limit: int = wiki.SUMMARY_CHARS) -> str:
    """The first prose sentences of a DText wiki body, markup stripped, at most ``limit`` chars."""
    return wiki.summarize(body, limit)


def _cursor_key(base: str, endpoint: str) -> str:
    return f"danbooru:{base}:{endpoint}:cursor"


def import_api(
    db: TagDB,
    base_url: str = DEFAULT_BASE,
    endpoints=ENDPOINTS,
    min_posts: int = 0,
    max_pages: int | None = None,
    restart: bool = False,
    min_interval: float = 1.0,
    client: DanbooruClient | None = None,
    progress: Callable[[str, int], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
    page_limit: int = PAGE_LIMIT,
    overwrite: bool = False,
) -> dict:
    """Fetch tags, aliases and wiki descriptions into ``db``. Returns counts per endpoint (records
    read), plus for the wiki what became of its pages (``wiki_descriptions_set`` and the like).
    A wiki description replaces one from another source only with ``overwrite``."""
    client = client or DanbooruClient(base_url, min_interval=min_interval)
    base = client.base
    counts = {}
    wiki_stats: dict = {}
    specs = {
        "tags": ("/tags.json", {"search[hide_empty]": "yes", **({"search[post_count]": f">={min_posts}"} if min_posts else {})}),
        "aliases": ("/tag_aliases.json", {"search[status]": "active"}),
        "wiki": ("/wiki_pages.json", {"search[is_deleted]": "false"}),
    }
    for endpoint in endpoints:
        if endpoint not in specs:
            raise TagLoomError(f"unknown Danbooru endpoint {endpoint!r} (one of {', '.join(ENDPOINTS)})")
        path, extra = specs[endpoint]
        key = _cursor_key(base, endpoint)
        if restart:
            db.set_meta(key, None)
        cursor = int(db.get_meta(key, "0") or 0)
        n = pages = 0
        while max_pages is None or pages < max_pages:
            if should_stop and should_stop():
                raise CancelledError(f"Danbooru import stopped; run it again to resume after {endpoint} id {cursor}")
            page = client.get(path, {"limit": page_limit, "page": f"a{cursor}", **extra})
            pages += 1
            if not page:
                break
            ids = [r.get("id") for r in page if isinstance(r, dict) and isinstance(r.get("id"), int)]
            if not ids:
                raise TagLoomError(f"{base}{path} (page a{cursor}): records have no id")
            if endpoint == "tags":
                rows = [
                    {"name": r["name"], "category": r.get("category"), "post_count": r.get("post_count")}
                    for r in page
                    if r.get("name") and not r.get("is_deprecated")
                ]
                db.upsert_tags(rows)
            elif endpoint == "aliases":
                db.add_aliases(
                    (r["antecedent_name"], r["consequent_name"])
                    for r in page
                    if r.get("antecedent_name") and r.get("consequent_name") and r.get("status", "active") == "active"
                )
            else:
                # Pages for tags that exist set descriptions; their other_names (mostly Japanese and
                # Chinese names of the tag) become translations: what multilingual queries match.
                wiki.apply_pages(db, (
                    {"title": canonical(r["title"]), "body": r.get("body") if isinstance(r.get("body"), str) else "",
                     "other_names": wiki.other_names(r.get("other_names")), "is_deleted": bool(r.get("is_deleted"))}
                    for r in page if isinstance(r.get("title"), str) and r["title"].strip()
                ), wiki_stats, overwrite=overwrite)
            n += len(page)
            cursor = max(ids)
            db.set_meta(key, str(cursor))  # after the page is committed: a crash re-reads at most one page
            if progress:
                progress(endpoint, n)
            if len(page) < page_limit:
                break
        counts[endpoint] = n
    for k in ("descriptions_set", "descriptions_kept", "translations_added", "unknown_tags"):
        if k in wiki_stats:
            counts[f"wiki_{k}"] = wiki_stats[k]
    counts["requests"] = client.requests
    return counts
