"""``tagloom tags fetch``: download a published tag list and import it.

Default source: the tag list of the MIT-licensed WebUI tag-autocomplete extension
(DominikDoom/a1111-sd-webui-tagcomplete, ``tags/danbooru.csv``): ~140k Danbooru tags with categories,
post counts and aliases, refreshed by its maintainers from the Danbooru API. Its format is the
``tagcomplete`` one, and it is the list most WebUI users already have. ``--url`` takes any other
list (the e621 one beside it, a mirror, a file on a local server) and ``--translations URL`` adds a
translation CSV. The download resumes (HTTP Range) when a ``.part`` file is left from an interrupted
run; it is imported only once it is complete.
"""

from __future__ import annotations

import os
import urllib.error
import urllib.request
from pathlib import Path

from tagloom import __version__, config
from tagloom.errors import TagLoomError

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
