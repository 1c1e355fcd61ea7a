"""The classic-completion snapshot of a tag database, persisted beside it, so that a host start loads
the engine for 140k tags in a fraction of a second instead of rebuilding it (about 1.5 s on two
quiet cores, tens of seconds on a busy machine).

File: ``<database>.search.npz`` (``tags.sqlite`` -> ``tags.sqlite.search.npz``), an uncompressed numpy
archive read with ``allow_pickle=False``: numeric arrays, strings as one UTF-8 blob per list
(NUL-separated; a list holding a NUL is not persisted), and one JSON member for the small and sparse
rest. No pickle anywhere, so a file that is not ours cannot run code; a file that is damaged fails
the zip CRC or the shape checks and is ignored (logged) and rebuilt.

It is used only when its key matches:
- ``FORMAT_VERSION`` (bump it when what ``_Tags``/``ClassicIndex`` hold changes) and a fingerprint of
  the code that builds the structures (classic.py, engine.py, this file), so a changed ``normalize``
  can never serve keys from an old file;
- the database's stamp: the ``content_version`` counter its triggers maintain (tagloom/tags/db.py:
  any insert, delete or relevant update by any writer moves it; a description or a meta row does
  not), the random ``database_id`` it got when created, and the largest tag, alias and translation
  rowids, which tell apart two databases whose counters happen to agree. All of it comes from
  primary keys: well under a millisecond.

Written atomically (a temporary file in the same folder, then ``os.replace``), so a reader sees the
old file or the new one, and two processes building at once simply both write a valid file.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import sqlite3
import stat
import tempfile
from collections import Counter
from pathlib import Path
from typing import Callable, TypeVar

import numpy as np

log = logging.getLogger("tagloom")

FORMAT_VERSION = 1
SUFFIX = ".search.npz"
# What happened to snapshots in this process: built, saved, loaded, stale, missing, corrupt (tests).
STATS: Counter = Counter()

T = TypeVar("T")
_code: str | None = None


def path_for(db_path: str | Path) -> Path:
    db_path = Path(db_path)
    return db_path.with_name(db_path.name + SUFFIX)


def code_fingerprint() -> str:
    """Hash of the source files that decide what the snapshot holds (read once per process)."""
    global _code
    if _code is None:
        # The files beside this one, read rather than imported: engine imports this module, and an
        # import back (even inside a function) would be an import circle (docs/development.md).
        here = Path(__file__)
        h = hashlib.sha256()
        for module_file in (here.with_name("classic.py"), here.with_name("engine.py"), here):
            try:
                h.update(Path(module_file).read_bytes())
            except OSError:  # installed without sources: FORMAT_VERSION alone decides
                h.update(str(module_file).encode())
        _code = h.hexdigest()[:16]
    return _code


def db_stamp(conn: sqlite3.Connection) -> list | None:
    """The database state the snapshot is keyed on (JSON-able), or None when the database has no
    change counter (then nothing is persisted)."""
    try:
        row = conn.execute(
            "SELECT (SELECT n FROM content_version WHERE id = 1), (SELECT value FROM meta WHERE key = 'database_id'),"
            " (SELECT MAX(id) FROM tags), (SELECT MAX(rowid) FROM aliases), (SELECT MAX(rowid) FROM translations)"
        ).fetchone()
    except sqlite3.Error:
        return None
    return None if row[0] is None else list(row)


def _blob(strings: list[str]) -> np.ndarray:
    text = "\x00".join(strings)
    if text.count("\x00") != max(len(strings) - 1, 0):
        raise ValueError("a string holds a NUL character")
    return np.frombuffer(text.encode("utf-8", "surrogatepass"), dtype=np.uint8)


def _strings(blob: np.ndarray, n: int) -> list[str]:
    if n == 0:
        return []
    out = blob.tobytes().decode("utf-8", "surrogatepass").split("\x00")
    if len(out) != n:
        raise ValueError(f"expected {n} strings, found {len(out)}")
    return out


def _encode(data: dict, stamp: list) -> dict[str, np.ndarray]:
    n = len(data["names"])
    meta = {
        "version": FORMAT_VERSION,
        "code": code_fingerprint(),
        "stamp": stamp,
        "n": n,
        "category": data["category"],
        "main_category": [[r, v] for r, v in enumerate(data["main_category"]) if v is not None],
        "translations": [[r, d] for r, d in enumerate(data["translations"]) if d],
        "alphabet": data["classic"]["alphabet"],
    }
    arrays = {
        "ids": np.asarray(data["ids"], dtype=np.int64),
        "post_count": np.asarray(data["post_count"], dtype=np.int64),
        "names": _blob(data["names"]),
    }
    for table in ("direct", "words"):
        t = data["classic"][table]
        meta[f"{table}_n"] = len(t["keys"])
        meta[f"{table}_short_keys"] = t["short_keys"]
        arrays[f"{table}_keys"] = _blob(t["keys"])
        arrays[f"{table}_kind"] = np.asarray(t["kind"], dtype=np.int8)
        arrays[f"{table}_tag"] = np.asarray(t["tag"], dtype=np.int32)
        arrays[f"{table}_short_pos"] = np.asarray(t["short_pos"], dtype=np.int32)
    arrays["meta"] = np.frombuffer(json.dumps(meta, separators=(",", ":")).encode("ascii"), dtype=np.uint8)
    return arrays


def _decode(z, meta: dict) -> dict:
    n = int(meta["n"])
    ids, post_count = z["ids"], z["post_count"]
    if ids.shape != (n,) or post_count.shape != (n,) or len(meta["category"]) != n:
        raise ValueError("tag arrays do not match the tag count")
    main_category: list = [None] * n
    for r, v in meta["main_category"]:
        main_category[r] = v
    translations: list[dict] = [{} for _ in range(n)]
    for r, d in meta["translations"]:
        translations[r] = d
    classic = {"alphabet": meta["alphabet"]}
    for table in ("direct", "words"):
        classic[table] = {
            "keys": _strings(z[f"{table}_keys"], int(meta[f"{table}_n"])),
            "kind": z[f"{table}_kind"],
            "tag": z[f"{table}_tag"],
            "short_keys": meta[f"{table}_short_keys"],
            "short_pos": z[f"{table}_short_pos"],
        }
    return {"ids": ids, "post_count": post_count, "names": _strings(z["names"], n), "category": meta["category"],
            "main_category": main_category, "translations": translations, "classic": classic}


def load(db_path: str | Path, stamp: list, restore: Callable[[dict], T]) -> T | None:
    """``restore(data)`` of the persisted snapshot when it exists and matches ``stamp`` and this
    code; None otherwise (missing, stale, or unreadable: the caller builds and saves a new one)."""
    path = path_for(db_path)
    try:
        f = open(path, "rb")
    except FileNotFoundError:
        STATS["missing"] += 1
        return None
    except OSError as e:
        log.warning("tagloom: cannot read the search snapshot %s (%s): rebuilding it", path, e)
        STATS["corrupt"] += 1
        return None
    try:
        with f, np.load(f, allow_pickle=False) as z:
            meta = json.loads(z["meta"].tobytes())
            if meta.get("version") != FORMAT_VERSION or meta.get("code") != code_fingerprint():
                log.info("tagloom: the search snapshot %s is from another version: rebuilding it", path)
                STATS["stale"] += 1
                return None
            if meta.get("stamp") != stamp:
                log.info("tagloom: the tag database changed since %s was written: rebuilding it", path.name)
                STATS["stale"] += 1
                return None
            result = restore(_decode(z, meta))
    except Exception as e:  # noqa: BLE001 - any damage (truncated, garbage, wrong shapes) means rebuild
        log.warning("tagloom: ignoring the damaged search snapshot %s (%s: %s): rebuilding it", path,
                    type(e).__name__, e)
        STATS["corrupt"] += 1
        return None
    STATS["loaded"] += 1
    return result


def save(db_path: str | Path, stamp: list, data: dict) -> bool:
    """Write the snapshot atomically beside the database. False (logged) when it cannot be written:
    the engine works without it, the next start only builds again."""
    path = path_for(db_path)
    tmp = None
    try:
        arrays = _encode(data, stamp)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name + ".", suffix=".tmp")
        with os.fdopen(fd, "wb") as f:
            np.savez(f, **arrays)
        os.chmod(tmp, stat.S_IMODE(os.stat(db_path).st_mode))  # mkstemp makes it 0600; share like the db
        os.replace(tmp, path)
        tmp = None
    except Exception as e:  # noqa: BLE001 - a read-only folder, a full disk, a NUL in a tag name
        log.warning("tagloom: could not write the search snapshot %s (%s: %s)", path, type(e).__name__, e)
        return False
    finally:
        if tmp is not None:
            try:
                os.unlink(tmp)
            except OSError:
                pass
    STATS["saved"] += 1
    return True
