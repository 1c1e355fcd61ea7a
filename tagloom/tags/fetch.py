"""``tagloom tags fetch``: download a published tag list and import it.

Default source: the tag list of the MIT-licensed WebUI tag-autocomplete extension
(DominikDoom/a1111-sd-webui-tagcomplete, ``tags/danbooru.csv``): ~140k Danbooru tags with categories,
post counts and aliases, refreshed by its maintainers from the Danbooru API. Its format is the
``tagcomplete`` one, and it is the list most WebUI users already have. ``--url`` takes any other
list (the e621 one beside it, a mirror, a file on a local server) and ``--translations URL`` adds a
translation CSV. The download resumes (HTTP Range) when a ``.part`` file is left from an interrupted
run; it is imported only once it is complete.

``--wiki`` then adds the Danbooru wiki descriptions (``fetch_wiki``): from the API's
``/wiki_pages.json`` (the resumable, rate-limited importer of tagloom/tags/danbooru.py, its cursor
kept in the database, so a later run fetches only new pages), or from a published dump
(``--wiki-file``, a URL or a local file). The tag list is imported and committed first; a wiki
source that fails is reported and leaves the tag list as it is.
"""

from __future__ import annotations

import os
import urllib.error
import urllib.request
from pathlib import Path

from tagloom import __version__, config
from tagloom.errors import CancelledError, TagLoomError

DEFAULT_URL = "https://raw.githubusercontent.com/DominikDoom/a1111-sd-webui-tagcomplete/main/tags/danbooru.csv"


def download(url: str, dest: Path, timeout: float = 60.0, progress=None) -> Path:
    """Download ``url`` to ``dest`` through ``dest.part`` (resumed when present)."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    have = part.stat().st_size if part.exists() else 0
    headers = {"User-Agent": f"TagLoom/{__version__}"}
    if have:
        headers["Range"] = f"bytes={have}-"
    try:
        resp = urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=timeout)
    except urllib.error.HTTPError as e:
        if e.code == 416 and have:  # the part file is already complete
            os.replace(part, dest)
            return dest
        raise TagLoomError(f"{url}: HTTP {e.code} {e.reason}") from None
    except (urllib.error.URLError, TimeoutError, ConnectionError) as e:
        raise TagLoomError(f"{url}: cannot download ({getattr(e, 'reason', e)})") from None
    with resp:
        mode = "ab" if have and resp.status == 206 else "wb"
        done = have if mode == "ab" else 0
        with part.open(mode) as f:
            while True:
                chunk = resp.read(1 << 16)
                if not chunk:
                    break
                f.write(chunk)
                done += len(chunk)
                if progress:
                    progress(done)
    os.replace(part, dest)
    return dest


def fetch(db, url: str = DEFAULT_URL, translations_url: str | None = None, progress=None) -> dict:
    from tagloom.tags.importers import import_file

    folder = config.data_dir() / "downloads"
    name = Path(url.split("?")[0]).name or "tags.csv"
    path = download(url, folder / name, progress=progress)
    result = {"tags": import_file(db, path, "auto"), "file": str(path)}
    if translations_url:
        tpath = download(translations_url, folder / (Path(translations_url.split("?")[0]).name or "translations.csv"))
        result["translations"] = import_file(db, tpath, "translations")
    return result


def fetch_wiki(db, base_url: str | None = None, dump: str | None = None, min_interval: float = 1.0,
               max_pages: int | None = None, overwrite: bool = False, progress=None, client=None) -> dict:
    """Wiki descriptions into ``db`` from the Danbooru API (``base_url``) or a dump (``dump``: a URL or
    a file). Returns the counts, or ``{"error": message}`` when the source failed (what was written
    before the failure stays; the API importer resumes from its saved cursor)."""
    from tagloom.tags import danbooru
    from tagloom.tags.wiki import import_wiki

    try:
        if dump:
            path = Path(dump)
            if dump.startswith(("http://", "https://")):
                name = Path(dump.split("?")[0]).name or "wiki_pages.json"
                path = download(dump, config.data_dir() / "downloads" / name)
            return import_wiki(db, path, overwrite=overwrite, progress=progress)
        counts = danbooru.import_api(
            db, base_url or danbooru.DEFAULT_BASE, endpoints=("wiki",), max_pages=max_pages, min_interval=min_interval,
            client=client, overwrite=overwrite, progress=(lambda _e, n: progress(n)) if progress else None,
        )
        return {"pages": counts["wiki"], **{k[5:]: v for k, v in counts.items() if k.startswith("wiki_")},
                "requests": counts["requests"]}
    except CancelledError:
        raise
    except TagLoomError as e:
        return {"error": str(e)}
