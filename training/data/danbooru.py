"""`tagloom train fetch-danbooru`: build a dataset folder from Danbooru's posts API.

Each post becomes ``<id>.<ext>`` plus ``<id>.txt``: the rating tag first (general, sensitive,
questionable, explicit), then the general tags, then, by option, character, copyright and artist
tags. Deleted and banned posts, posts without a file URL (restricted) and non-image files (video,
zip, swf) are skipped. Requests are rate-limited and 429/5xx answers are retried with back-off.

Resumable: a post is done when its ``.txt`` exists (written after the image, atomically), and the
paging cursor (the lowest post id seen) is kept in ``.danbooru.json``, so a rerun continues where the
last one stopped and never downloads a finished post again.

Login: ``DANBOORU_LOGIN`` and ``DANBOORU_API_KEY`` from the environment (or config.toml
``[secrets]``), sent as HTTP basic auth, never written to disk or logs.
"""

from __future__ import annotations

import asyncio
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from tagloom import config
from tagloom.errors import TagLoomError

DEFAULT_BASE_URL = "https://danbooru.donmai.us"
IMAGE_EXTS = {"jpg", "jpeg", "png", "webp"}
RATINGS = {"g": "general", "s": "sensitive", "q": "questionable", "e": "explicit"}
PAGE_LIMIT = 200  # Danbooru's maximum posts per page
STATE_FILE = ".danbooru.json"


@dataclass
class FetchOptions:
    tags: str
    limit: int
    out: Path
    base_url: str = DEFAULT_BASE_URL
    character: bool = False
    copyright: bool = False
    artist: bool = False
    spaces: bool = False  # "long hair" instead of "long_hair" (prompt style)
    rate: float = 2.0  # requests per second
    retries: int = 5
    timeout: float = 60.0


@dataclass
class FetchResult:
    downloaded: int
    skipped: dict[str, int]
    existing: int


def caption_for(post: dict, opts: FetchOptions) -> str:
    parts = [RATINGS.get(post.get("rating") or "", "general")]
    parts += (post.get("tag_string_general") or "").split()
    if opts.character:
        parts += (post.get("tag_string_character") or "").split()
    if opts.copyright:
        parts += (post.get("tag_string_copyright") or "").split()
    if opts.artist:
        parts += (post.get("tag_string_artist") or "").split()
    if opts.spaces:
        parts = [p.replace("_", " ") for p in parts]
    return ", ".join(parts)


def skip_reason(post: dict) -> str | None:
    if post.get("is_deleted"):
        return "deleted"
    if post.get("is_banned"):
        return "banned"
    if not post.get("file_url"):
        return "no_file_url"
    ext = (post.get("file_ext") or "").lower()
    if ext not in IMAGE_EXTS:
        return f"not_image_{ext or 'unknown'}"
    return None


class _RateLimiter:
    def __init__(self, rate: float):
        self.interval = 1.0 / rate if rate > 0 else 0.0
        self.next = 0.0

    async def wait(self):
        now = time.monotonic()
        if now < self.next:
            await asyncio.sleep(self.next - now)
        self.next = max(now, self.next) + self.interval


async def _request(session, limiter: _RateLimiter, url: str, opts: FetchOptions, params=None) -> bytes:
    import aiohttp

    delay = 1.0
    for attempt in range(opts.retries + 1):
        await limiter.wait()
        try:
            async with session.get(url, params=params) as resp:
                if resp.status == 429 or resp.status >= 500:
                    retry_after = resp.headers.get("Retry-After")
                    wait = float(retry_after) if retry_after and retry_after.replace(".", "", 1).isdigit() else delay
                    if attempt < opts.retries:
                        await asyncio.sleep(min(wait, 60))
                        delay *= 2
                        continue
                if resp.status == 401 or resp.status == 403:
                    raise TagLoomError(f"{url}: HTTP {resp.status} (check DANBOORU_LOGIN / DANBOORU_API_KEY)")
                if resp.status != 200:
                    # Danbooru explains refusals (e.g. too many tags for an anonymous search) in the body
                    detail = (await resp.text(errors="replace"))[:300].strip()
                    raise TagLoomError(f"{url}: HTTP {resp.status}" + (f": {detail}" if detail else ""))
                return await resp.read()
        except (aiohttp.ClientError, asyncio.TimeoutError) as e:
            if attempt >= opts.retries:
                raise TagLoomError(f"{url}: {type(e).__name__}: {e}") from e
            await asyncio.sleep(delay)
            delay *= 2
    raise TagLoomError(f"{url}: still failing after {opts.retries} retries")


def _load_state(out: Path, tags: str) -> dict:
    path = out / STATE_FILE
    if path.is_file():
        try:
            state = json.loads(path.read_text())
            if state.get("tags") == tags:
                return state
        except ValueError:
            pass
    return {"tags": tags, "cursor": None, "exhausted": False}


def _save_state(out: Path, state: dict) -> None:
    tmp = out / (STATE_FILE + ".tmp")
    tmp.write_text(json.dumps(state))
    os.replace(tmp, out / STATE_FILE)


def _lower(cursor, pid: int) -> int:
    return pid if not cursor else min(pid, int(cursor))


def _done_ids(out: Path) -> set[int]:
    return {int(p.stem) for p in out.glob("*.txt") if p.stem.isdigit()}


async def fetch_async(opts: FetchOptions, log: Callable[[str], None] = print) -> FetchResult:
    import aiohttp

    out = Path(opts.out)
    out.mkdir(parents=True, exist_ok=True)
    state = _load_state(out, opts.tags)
    done = _done_ids(out)
    existing = len(done)
    skipped: dict[str, int] = {}
    downloaded = 0
    login = config.secret("DANBOORU_LOGIN", "danbooru_login")
    api_key = config.secret("DANBOORU_API_KEY", "danbooru_api_key")
    limiter = _RateLimiter(opts.rate)
    timeout = aiohttp.ClientTimeout(total=opts.timeout)
    headers = {"User-Agent": "TagLoom dataset fetcher (+https://github.com/tagloom/ComfyUI-TagLoom)"}
    if login and api_key:
        import base64

        token = base64.b64encode(f"{login}:{api_key}".encode()).decode()
        headers["Authorization"] = f"Basic {token}"
    base = opts.base_url.rstrip("/")
    async with aiohttp.ClientSession(timeout=timeout, headers=headers) as session:
        while len(done) < opts.limit and not state.get("exhausted"):
            # page=b<id> pages by id ("before"), stable while new posts are uploaded and resumable
            params = {"tags": opts.tags, "limit": str(PAGE_LIMIT)}
            if state.get("cursor"):
                params["page"] = f"b{state['cursor']}"
            body = await _request(session, limiter, f"{base}/posts.json", opts, params)
            try:
                posts = json.loads(body)
            except ValueError as e:
                raise TagLoomError(f"{base}/posts.json: answer is not JSON: {e}") from e
            if isinstance(posts, dict):  # Danbooru answers errors as {"success": false, "message": ...}
                raise TagLoomError(f"{base}/posts.json: {posts.get('message') or posts}")
            if not posts:
                state["exhausted"] = True
                _save_state(out, state)
                break
            for post in posts:
                if len(done) >= opts.limit:
                    break
                pid = int(post["id"])
                # the cursor moves past a post only once it is finished (saved or skipped), so a kill
                # mid-download retries that post
                if pid in done:
                    state["cursor"] = _lower(state.get("cursor"), pid)
                    continue
                reason = skip_reason(post)
                if reason:
                    skipped[reason] = skipped.get(reason, 0) + 1
                    state["cursor"] = _lower(state.get("cursor"), pid)
                    continue
                ext = post["file_ext"].lower()
                data = await _request(session, limiter, post["file_url"], opts)
                img = out / f"{pid}.{ext}"
                tmp = out / f".{pid}.{ext}.part"
                tmp.write_bytes(data)
                os.replace(tmp, img)
                cap_tmp = out / f".{pid}.txt.part"
                cap_tmp.write_text(caption_for(post, opts) + "\n", encoding="utf-8")
                os.replace(cap_tmp, out / f"{pid}.txt")  # the caption last: it marks the post done
                done.add(pid)
                downloaded += 1
                state["cursor"] = _lower(state.get("cursor"), pid)
                _save_state(out, state)
                log(f"{len(done)}/{opts.limit} post {pid}")
            _save_state(out, state)
    return FetchResult(downloaded, skipped, existing)


def fetch(opts: FetchOptions, log: Callable[[str], None] = print) -> FetchResult:
    return asyncio.run(fetch_async(opts, log))
