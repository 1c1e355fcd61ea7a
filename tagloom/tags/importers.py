"""Importers for tag lists and translations. Each one streams its file (never loads it whole),
writes in batches, and is idempotent: importing the same file twice changes nothing the second time.

Formats (``detect_format`` picks one from the file name and its first line):

- ``tagcomplete``: the WebUI tag-autocomplete list, ``name,category,post_count,"alias1,alias2"``, no
  header (aliases starting with ``/`` are typing shortcuts such as ``/lh``).
- ``selected_tags``: the wd taggers' ``selected_tags.csv`` (header ``tag_id,name,category,count``).
- ``translations``: ``tag,translation`` or the legacy ``tag,category,"translation"``; several
  translations in one field may be separated by ``/``. The language is detected from the script
  (Chinese, Japanese, Korean) unless given.
- ``jsonl``: TagLoom's own export (``tagloom tags export --format jsonl``), one tag object a line.
- ``csv``: TagLoom's own CSV export (header ``name,category,category_name,...``).
- ``danbooru_json``: a saved Danbooru ``/tags.json`` page (a JSON list of tag objects).
- ``wiki``: a Danbooru wiki dump (JSON array, JSON lines or CSV of pages with ``title`` and ``body``):
  descriptions and translations for tags already in the database (tagloom/tags/wiki.py).
"""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path
from typing import Callable, Iterator

from tagloom.errors import InputFileError
from tagloom.tags.db import CATEGORY_IDS, TagDB
from tagloom.tags.lang import detect_language  # noqa: F401 - also imported from here

FORMATS = ("tagcomplete", "selected_tags", "translations", "jsonl", "danbooru_json", "csv", "wiki")
BATCH = 5000



def _is_int(s: str) -> bool:
    s = s.strip()
    return s.lstrip("-").isdigit()


def _open_text(path: Path):
    if not path.is_file():
        raise InputFileError(path, "no such file")
    return path.open("r", encoding="utf-8-sig", newline="")


def detect_format(path: str | Path) -> str:
    """The format of a tag file, from its name and first non-empty line."""
    path = Path(path)
    with _open_text(path) as f:
        try:
            first = ""
            for line in f:
                if line.strip():
                    first = line.strip()
                    break
        except UnicodeDecodeError as e:
            raise InputFileError(path, f"not UTF-8 text ({e.reason} at byte {e.start})") from e
    if not first:
        raise InputFileError(path, "empty file")
    if first.startswith("{"):
        from tagloom.tags.wiki import is_wiki_object

        try:
            obj = json.loads(first)
        except json.JSONDecodeError:
            obj = None
        return "wiki" if is_wiki_object(obj) else "jsonl"
    if first.startswith("["):
        from tagloom.tags.wiki import is_wiki_object, iter_json_array

        try:
            obj = next((o for _, o in iter_json_array(path)), None)
        except InputFileError:
            obj = None  # the import names the bad line
        return "wiki" if is_wiki_object(obj) else "danbooru_json"
    row = next(csv.reader([first]))
    head = [c.strip().lower() for c in row]
    if "title" in head and "body" in head:
        return "wiki"
    if head[:4] == ["tag_id", "name", "category", "count"] or (head[:1] == ["tag_id"] and "name" in head):
        return "selected_tags"
    if head[:3] == ["name", "category", "category_name"]:
        return "csv"
    if len(row) >= 3 and _is_int(row[1]) and (_is_int(row[2]) or not row[2].strip()):
        return "tagcomplete"
    if len(row) == 3 and _is_int(row[1]):
        return "translations"  # legacy tag,category,"译名"
    if len(row) == 2 and not _is_int(row[1]):
        return "translations"
    if len(row) == 2 and _is_int(row[1]):
        return "tagcomplete"  # name,category without counts
    raise InputFileError(path, f"line 1: cannot tell the format of {first[:80]!r}; pass --format")


def _csv_rows(path: Path) -> Iterator[tuple[int, list[str]]]:
    """(line number, row) for every non-empty CSV row, with decode errors named by line."""
    with _open_text(path) as f:
        reader = csv.reader(f)
        while True:
            try:
                row = next(reader)
            except StopIteration:
                return
            except UnicodeDecodeError as e:
                raise InputFileError(path, f"line {reader.line_num + 1}: not UTF-8 text ({e.reason})") from e
            except csv.Error as e:
                raise InputFileError(path, f"line {reader.line_num}: bad CSV: {e}") from e
            if not row or not any(c.strip() for c in row):
                continue
            yield reader.line_num, row


def _int(path: Path, line: int, value: str, what: str, allow_empty: bool = True) -> int | None:
    value = value.strip()
    if not value and allow_empty:
        return None
    try:
        return int(float(value)) if "." in value or "e" in value.lower() else int(value)
    except ValueError:
        raise InputFileError(path, f"line {line}: {what} must be a number, got {value!r}") from None


def _category(path: Path, line: int, value) -> int | None:
    if value is None:
        return None
    if isinstance(value, int):
        return value
    value = str(value).strip()
    if not value:
        return None
    if value.lower() in CATEGORY_IDS:
        return CATEGORY_IDS[value.lower()]
    return _int(path, line, value, "category")


class ImportStats(dict):
    """Counts of what an import read and wrote (tags, aliases, translations, lines)."""


def _flush(db: TagDB, tags: list, aliases: list, translations: list, stats: ImportStats) -> None:
    if tags:
        stats["tags"] = stats.get("tags", 0) + db.upsert_tags(tags)
    if aliases:
        stats["aliases_added"] = stats.get("aliases_added", 0) + db.add_aliases(aliases)
    if translations:
        stats["translations_added"] = stats.get("translations_added", 0) + db.add_translations(translations)
    tags.clear(), aliases.clear(), translations.clear()


def import_file(
    db: TagDB,
    path: str | Path,
    fmt: str = "auto",
    lang: str | None = None,
    progress: Callable[[int], None] | None = None,
    overwrite: bool = False,
) -> ImportStats:
    """Import one file into ``db``. Returns counts; raises InputFileError naming file and line.
    ``overwrite``: a wiki dump replaces descriptions from other sources too."""
    path = Path(path)
    if fmt == "auto":
        fmt = detect_format(path)
    if fmt not in FORMATS:
        raise InputFileError(path, f"unknown format {fmt!r} (one of auto, {', '.join(FORMATS)})")
    if fmt == "wiki":
        from tagloom.tags.wiki import import_wiki

        return ImportStats(import_wiki(db, path, overwrite=overwrite, progress=progress))
    stats = ImportStats(format=fmt, lines=0)
    tags: list[dict] = []
    aliases: list[tuple[str, str]] = []
    translations: list[tuple[str, str, str]] = []
    stubs: list[dict] = []

    def rows():
        if fmt in ("jsonl", "danbooru_json"):
            yield from _json_rows(path, fmt)
        elif fmt == "csv":
            header = None
            for line, row in _csv_rows(path):
                if header is None:
                    header = [c.strip() for c in row]
                    continue
                d = dict(zip(header, row))
                d = {k: (v if v != "" else None) for k, v in d.items()}
                d["aliases"] = [a for a in (d.get("aliases") or "").split(",") if a]
                try:
                    d["translations"] = json.loads(d.get("translations") or "{}")
                except json.JSONDecodeError as e:
                    raise InputFileError(path, f"line {line}: translations is not JSON ({e.msg})") from None
                d["post_count"] = _int(path, line, d.get("post_count") or "", "post_count")
                if d.get("category_confidence"):
                    d["category_confidence"] = float(d["category_confidence"])
                yield line, d
        else:
            yield from _csv_rows(path)

    for line, row in rows():
        stats["lines"] += 1
        if fmt == "tagcomplete":
            name = row[0].strip()
            if not name:
                raise InputFileError(path, f"line {line}: empty tag name")
            tags.append(
                {
                    "name": name,
                    "category": _category(path, line, row[1]) if len(row) > 1 else None,
                    "post_count": _int(path, line, row[2], "post_count") if len(row) > 2 else None,
                }
            )
            if len(row) > 3:
                aliases.extend((a, name) for a in row[3].split(",") if a.strip())
        elif fmt == "selected_tags":
            if line == 1 or row[0].strip().lower() == "tag_id":
                header = [c.strip().lower() for c in row]
                continue
            d = dict(zip(header, row))
            name = (d.get("name") or "").strip()
            if not name:
                raise InputFileError(path, f"line {line}: empty tag name")
            tags.append(
                {
                    "name": name,
                    "category": _category(path, line, d.get("category")),
                    "post_count": _int(path, line, d.get("count", ""), "count"),
                }
            )
        elif fmt == "translations":
            if len(row) < 2:
                raise InputFileError(path, f"line {line}: expected tag,translation, got {len(row)} field(s)")
            name = row[0].strip()
            legacy = len(row) == 3 and _is_int(row[1])
            text = row[-1] if len(row) == 2 or legacy else ",".join(row[1:])
            if legacy:  # the legacy format knows the category: a tag missing from the list gets it
                stubs.append({"name": name, "category": int(row[1])})
            for part in text.split("/"):
                part = part.strip()
                if part:
                    tl = lang or detect_language(part)
                    # Latin-only entries ("CG") in a Chinese file are Chinese translations too.
                    if tl == "en" and not lang:
                        tl = stats.get("_script_lang", "en")
                    elif not lang:
                        stats["_script_lang"] = tl
                    translations.append((name, tl, part))
        else:  # jsonl / danbooru_json: dicts
            name = str(row.get("name") or row.get("tag") or "").strip()
            if not name:
                raise InputFileError(path, f"line {line}: object has no name")
            cat = row.get("category")
            if isinstance(cat, str) and not _is_int(cat):
                cat = CATEGORY_IDS.get(cat.lower())
            tags.append(
                {
                    "name": name,
                    "category": _category(path, line, cat),
                    "post_count": _int(path, line, str(row["post_count"]), "post_count")
                    if row.get("post_count") not in (None, "") else None,
                    "description": row.get("description") or None,
                    "description_source": row.get("description_source") or ("import" if row.get("description") else None),
                }
            )
            for a in row.get("aliases") or []:
                aliases.append((a, name))
            for tl, texts in (row.get("translations") or {}).items():
                for t in texts if isinstance(texts, list) else [texts]:
                    translations.append((name, tl, t))
            if row.get("main_category"):
                stats.setdefault("_pack", []).append(row)
        if len(tags) + len(aliases) + len(translations) >= BATCH:
            if stubs:
                stats["tags_created"] = stats.get("tags_created", 0) + db.add_missing_tags(stubs)
                stubs.clear()
            _flush(db, tags, aliases, translations, stats)
            if progress:
                progress(stats["lines"])
    if stubs:
        stats["tags_created"] = stats.get("tags_created", 0) + db.add_missing_tags(stubs)
    _flush(db, tags, aliases, translations, stats)
    # Pack categories from our own export round-trip with their provenance.
    stats.pop("_script_lang", None)
    for row in stats.pop("_pack", []):
        db.set_pack_category(
            row["name"],
            row["main_category"],
            row.get("sub_category"),
            row.get("category_confidence"),
            row.get("category_source") or "import",
            row.get("category_prompt_version"),
        )
    if progress:
        progress(stats["lines"])
    return stats


def _json_rows(path: Path, fmt: str) -> Iterator[tuple[int, dict]]:
    if fmt == "jsonl":
        with _open_text(path) as f:
            for n, line in enumerate(_lines(path, f), 1):
                if not line.strip():
                    continue
                try:
                    obj = json.loads(line)
                except json.JSONDecodeError as e:
                    raise InputFileError(path, f"line {n}: bad JSON: {e.msg} (column {e.colno})") from e
                if not isinstance(obj, dict):
                    raise InputFileError(path, f"line {n}: expected a JSON object")
                yield n, obj
        return
    # A saved API page is one JSON array; such pages are at most a few MB, so json.load is fine.
    with _open_text(path) as f:
        try:
            data = json.load(f)
        except json.JSONDecodeError as e:
            raise InputFileError(path, f"line {e.lineno}: bad JSON: {e.msg} (column {e.colno})") from e
        except UnicodeDecodeError as e:
            raise InputFileError(path, f"not UTF-8 text ({e.reason})") from e
    if not isinstance(data, list):
        raise InputFileError(path, "expected a JSON list of tag objects (a Danbooru /tags.json page)")
    for i, obj in enumerate(data, 1):
        if not isinstance(obj, dict):
            raise InputFileError(path, f"item {i}: expected a JSON object")
        yield i, obj


def _lines(path: Path, f: io.TextIOBase) -> Iterator[str]:
    n = 0
    while True:
        try:
            line = f.readline()
        except UnicodeDecodeError as e:
            raise InputFileError(path, f"line {n + 1}: not UTF-8 text ({e.reason})") from e
        if not line:
            return
        n += 1
        yield line
