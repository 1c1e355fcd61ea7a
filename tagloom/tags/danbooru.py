"""Import from the Danbooru JSON API: ``/tags.json``, ``/tag_aliases.json`` and ``/wiki_pages.json``
(descriptions, and the page's ``other_names`` as translations).

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
import re
import time
import urllib.error
import urllib.parse
import urllib.request
from typing import Callable

from tagloom import __version__, config
from tagloom.errors import CancelledError, TagLoomError
from tagloom.tags.db import TagDB, canonical
from tagloom.tags.importers import detect_language

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


_DTEXT_LINK = re.compile(r"\[\[([^|\]]+)\|?([^\]]*)\]\]")
_DTEXT_TAG = re.compile(r"\[/?[a-z0-9]+(=[^\]]*)?\]", re.I)
_HEADER = re.compile(r"^h[1-6](#[\w-]+)?\.\s*", re.M)


def wiki_summary(body: str, limit: int = 300) -> str:
    """The first prose paragraph of a DText wiki body, markup stripped, at most ``limit`` chars."""
    for para in re.split(r"\r?\n\s*\r?\n", body or ""):
        para = para.strip()
        if not para or _HEADER.match(para) or para.startswith(("*", "[table", "[expand", "!")):
            continue
        text = _DTEXT_LINK.sub(lambda m: m.group(2) or m.group(1), para)
        text = _DTEXT_TAG.sub("", text)
        text = re.sub(r'"([^"]+)":\S+', r"\1", text)  # "label":url links
        text = re.sub(r"\s+", " ", text).strip()
        if text:
            return text if len(text) <= limit else text[: limit - 1].rsplit(" ", 1)[0] + "…"
    return ""


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
) -> dict:
    """Fetch tags, aliases and wiki descriptions into ``db``. Returns counts per endpoint."""
    client = client or DanbooruClient(base_url, min_interval=min_interval)
    base = client.base
    counts = {}
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
                live = [r for r in page if r.get("title") and not r.get("is_deleted")]
                db.set_descriptions((r["title"], s) for r in live if (s := wiki_summary(r.get("body", ""))))
                # A wiki page's other_names (mostly Japanese and Chinese names of the tag) become
                # translations, for tags that exist: they are what multilingual queries match.
                known = db.existing_names(r["title"] for r in live if r.get("other_names"))
                db.add_translations(
                    (r["title"], detect_language(n), n)
                    for r in live if canonical(r["title"]) in known
                    for n in r.get("other_names") or [] if isinstance(n, str) and n.strip()
                )
            n += len(page)
            cursor = max(ids)
            db.set_meta(key, str(cursor))  # after the page is committed: a crash re-reads at most one page
            if progress:
                progress(endpoint, n)
            if len(page) < page_limit:
                break
        counts[endpoint] = n
    counts["requests"] = client.requests
    return counts
