"""Danbooru wiki pages as tag descriptions and translations.

``summarize`` turns a DText wiki body into a short plain-text description: the first prose
sentences, markup stripped (``[[link|text]]`` -> text, ``{{tag search}}`` -> its words, ``h4.``
headings, ``[b]``/``[i]``/``[url]`` and the like, ``"label":url`` links), tables, quotes, expands and
spoilers dropped, "See also"/"External links" sections skipped, at most ``limit`` characters.

``import_wiki`` reads a local wiki dump in the formats it is published in:

- a JSON array of page objects (Danbooru's ``/wiki_pages.json``, saved or concatenated into one
  array), read incrementally, so a dump of every page never has to fit in memory as one object;
- JSON lines, one page object a line (BigQuery and Hugging Face dataset exports);
- CSV with a header naming ``title`` and ``body`` columns (and optionally ``other_names`` and
  ``is_deleted``).

A page object has ``title`` (the tag name, underscores), ``body`` (DText), and optionally
``other_names`` (a list, or in CSV a JSON list, ``{a,b}`` or space-separated names) and
``is_deleted``. Deleted pages and pages for tags that are not in the database are skipped and
counted (a wiki page never creates a tag). ``other_names`` become translations, their language
detected from the script. A description from another source (``tagloom describe``, an import of
our own export) is kept unless ``overwrite``; see ``TagDB.set_descriptions``.
"""

from __future__ import annotations

import ast
import csv
import html
import json
import re
import sys
from pathlib import Path
from typing import Callable, Iterable, Iterator

from tagloom.errors import InputFileError
from tagloom.tags.db import TagDB, canonical
from tagloom.tags.lang import detect_language

SOURCE = "wiki"  # the description_source of descriptions taken from the Danbooru wiki
SUMMARY_CHARS = 300
BATCH = 2000

# --- DText -> plain text ----------------------------------------------------------------------------

_BLOCK = re.compile(r"\[(table|quote|expand|spoilers?|code|nodtext)(?:=[^\]]*)?\].*?(?:\[/\1\]|\Z)", re.I | re.S)
_HEADING = re.compile(r"^h[1-6](?:#[\w-]+)?\.\s*(.*)$", re.I)
_SKIP_SECTION = re.compile(
    r"^(see also|related tags?|related|external links?|links|references|sources?|tag groups?|gallery|"
    r"examples?|trivia)\b", re.I)
_LINK = re.compile(r"\[\[([^|\]]*)(?:\|([^\]]*))?\]\]")
_SEARCH = re.compile(r"\{\{([^|}]*)(?:\|([^}]*))?\}\}")
_URL_BLOCK = re.compile(r"\[url\][^\[]*\[/url\]", re.I)
_LABEL_LINK = re.compile(r'"([^"]+)":(?:\[[^\]]*\]|<[^>]*>|\S*[^\s.,;:!?)\]])')  # a URL's trailing "." is prose
_TAG = re.compile(r"\[/?[a-z][a-z0-9]*(?:=[^\]]*)?\]", re.I)
_BARE_URL = re.compile(r"<https?://[^>]*>|https?://\S*[^\s.,;:!?)\]]")
_SENTENCE = re.compile(r"(?<=[.!?])\s+(?=[\"'(\[]?[A-Z0-9])")
_SKIP_SENTENCE = re.compile(
    r"^(see also|see\s|not to be confused|do not confuse|not to confuse|for the .{0,60}, see|compare\b|"
    r"this (wiki )?page is (a stub|incomplete)|please (see|help))", re.I)
_QUALIFIER = re.compile(r"\s*\([^()]*\)$")


def _link_text(m: re.Match) -> str:
    target, label = m.group(1), m.group(2)
    if label:
        return label
    text = target.replace("_", " ").strip()
    # [[hatsune miku (cosplay)|]]: the "pipe trick" shows the title without its qualifier
    return _QUALIFIER.sub("", text) if label == "" else text


def clean_dtext(text: str) -> str:
    """One paragraph of DText as plain text (links, searches, inline tags and URLs resolved)."""
    text = _LINK.sub(_link_text, text)
    text = _SEARCH.sub(lambda m: (m.group(2) or m.group(1)).replace("_", " "), text)
    text = _URL_BLOCK.sub("", text)
    text = _LABEL_LINK.sub(r"\1", text)
    text = _TAG.sub("", text)
    text = _BARE_URL.sub("", text)
    text = html.unescape(text)
    text = re.sub(r"\s+", " ", text).strip()
    return re.sub(r"\(\s*\)", "", re.sub(r"\s+([,.;:!?])", r"\1", text)).strip()


def trim(text: str, limit: int) -> str:
    """Whole sentences of ``text`` while they fit in ``limit`` chars; a first sentence longer than
    that is cut at a word and ends with an ellipsis."""
    text = text.strip()
    if len(text) <= limit:
        return text
    out = ""
    for s in _SENTENCE.split(text):
        if len(out) + len(s) + (1 if out else 0) > limit:
            break
        out = f"{out} {s}" if out else s
    if out:
        return out
    return text[: limit - 1].rsplit(" ", 1)[0].rstrip(",;:") + "…"


def summarize(body: str, limit: int = SUMMARY_CHARS) -> str:
    """The first meaningful prose sentences of a DText wiki body, plain text, at most ``limit`` chars."""
    body = _BLOCK.sub("\n\n", (body or "").replace("\r\n", "\n"))
    skipping = False
    para: list[str] = []

    def flush() -> str:
        text = clean_dtext(" ".join(para))
        para.clear()
        sentences = [s for s in _SENTENCE.split(text) if s and not _SKIP_SENTENCE.match(s)]
        # a paragraph that is only a link list or punctuation is not prose
        sentences = [s for s in sentences if re.search(r"[^\W\d_]{2,}", s)]
        return trim(" ".join(sentences), limit) if sentences else ""

    for line in body.split("\n") + [""]:
        stripped = line.strip()
        heading = _HEADING.match(stripped)
        if heading or not stripped:
            if para and not skipping and (text := flush()):
                return text
            para.clear()
            if heading:
                skipping = bool(_SKIP_SECTION.match(clean_dtext(heading.group(1))))
            continue
        if skipping or stripped.startswith(("*", "#", "!", "|", "<")):
            continue  # lists, embedded posts/assets, table rows
        para.append(stripped)
    return ""


# --- pages ------------------------------------------------------------------------------------------


def other_names(value) -> list[str]:
    """A page's other names from a list, a JSON list, ``{a,b}`` (PostgreSQL) or space-separated text.
    Danbooru writes spaces inside one name as underscores; they are spaces again here."""
    if value is None:
        return []
    if isinstance(value, str):
        s = value.strip()
        if not s:
            return []
        if s.startswith("["):
            try:
                value = json.loads(s)
            except json.JSONDecodeError:
                try:
                    value = ast.literal_eval(s)  # a Python list repr (pandas CSV export)
                except (ValueError, SyntaxError):
                    value = s.strip("[]").split(",")
        elif s.startswith("{") and s.endswith("}"):
            value = next(csv.reader([s[1:-1]], skipinitialspace=True), [])
        else:
            value = s.split()
    if not isinstance(value, (list, tuple)):
        return []
    out = []
    for n in value:
        if isinstance(n, str) and (n := n.replace("_", " ").strip()) and n not in out:
            out.append(n)
    return out


def _truthy(value) -> bool:
    if isinstance(value, str):
        return value.strip().lower() in ("true", "t", "1", "yes", "y")
    return bool(value)


def page_record(path: Path, line: int, obj) -> dict:
    if not isinstance(obj, dict):
        raise InputFileError(path, f"line {line}: expected a wiki page object, got {type(obj).__name__}")
    title = obj.get("title")
    if not isinstance(title, str) or not title.strip():
        raise InputFileError(path, f"line {line}: wiki page has no title (keys: {', '.join(list(obj)[:8]) or 'none'})")
    if "body" not in obj:
        raise InputFileError(path, f"line {line}: wiki page {title!r} has no body")
    body = obj.get("body")
    return {
        "title": canonical(title),
        "body": body if isinstance(body, str) else "",
        "other_names": other_names(obj.get("other_names")),
        "is_deleted": _truthy(obj.get("is_deleted")),
    }


def is_wiki_object(obj) -> bool:
    return isinstance(obj, dict) and "title" in obj and "body" in obj and "name" not in obj


def iter_json_array(path: Path, chunk: int = 1 << 20) -> Iterator[tuple[int, object]]:
    """(line, item) for each item of a top-level JSON array, read ``chunk`` chars at a time."""
    dec = json.JSONDecoder()
    _must_exist(path)
    with path.open("r", encoding="utf-8-sig", newline="") as f:
        buf, pos, eof = "", 0, False
        state = "start"  # start -> item -> sep -> item ... -> end
        mark, mark_line = 0, 1  # the line number at buf[mark]; counted forward, never from 0 again

        def line_at(p: int) -> int:
            nonlocal mark, mark_line
            if p < mark:
                return mark_line - buf.count("\n", p, mark)
            mark_line += buf.count("\n", mark, p)
            mark = p
            return mark_line

        def more() -> bool:
            nonlocal buf, pos, eof, mark, mark_line
            if eof:
                return False
            mark_line, mark = line_at(pos), 0
            try:
                data = f.read(chunk)
            except UnicodeDecodeError as e:
                raise InputFileError(path, f"near line {mark_line}: not UTF-8 text ({e.reason})") from e
            buf, pos = buf[pos:] + data, 0
            eof = not data
            return bool(data)

        while True:
            while True:
                while pos < len(buf) and buf[pos] in " \t\r\n":
                    pos += 1
                if pos < len(buf) or not more():
                    break
            here = line_at(pos)
            if pos >= len(buf):
                if state == "end":
                    return
                raise InputFileError(path, f"line {here}: the JSON array ends too early (a truncated file?)")
            c = buf[pos]
            if state == "start":
                if c != "[":
                    raise InputFileError(path, f"line {here}: expected a JSON array of wiki pages, got {c!r}")
                pos, state = pos + 1, "first"
            elif state in ("first", "item"):
                if c == "]" and state == "first":
                    pos, state = pos + 1, "end"
                    continue
                while True:
                    try:
                        obj, end = dec.raw_decode(buf, pos)
                        break
                    except json.JSONDecodeError as e:
                        if more():
                            continue
                        start = line_at(pos)
                        err_line = line_at(e.pos)
                        where = f" (in the item that starts on line {start})" if start != err_line else ""
                        raise InputFileError(path, f"line {err_line}: bad JSON: {e.msg}{where}") from None
                yield line_at(pos), obj
                pos, state = end, "sep"
            elif state == "sep":
                if c == ",":
                    pos, state = pos + 1, "item"
                elif c == "]":
                    pos, state = pos + 1, "end"
                else:
                    raise InputFileError(path, f"line {here}: bad JSON: expected ',' or ']' after an item, got {c!r}")
            else:
                raise InputFileError(path, f"line {here}: unexpected data after the JSON array")


def _jsonl_pages(path: Path) -> Iterator[tuple[int, object]]:
    for n, line in enumerate(_decoded_lines(path), 1):
        if not line.strip():
            continue
        try:
            yield n, json.loads(line)
        except json.JSONDecodeError as e:
            raise InputFileError(path, f"line {n}: bad JSON: {e.msg} (column {e.colno})") from None


def _must_exist(path: Path) -> None:
    if not path.is_file():
        raise InputFileError(path, "no such file")


def _decoded_lines(path: Path) -> Iterator[str]:
    """The file's lines, each decoded on its own, so a bad byte is named by its line."""
    _must_exist(path)
    with path.open("rb") as f:
        for n, raw in enumerate(f, 1):
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                raise InputFileError(path, f"line {n}: not UTF-8 text ({e.reason} at column {e.start + 1})") from None
            yield text.lstrip("\ufeff") if n == 1 else text


def _csv_rows_by_line(path: Path) -> Iterator[tuple[int, list[str]]]:
    reader = csv.reader(_decoded_lines(path))
    while True:
        try:
            row = next(reader)
        except StopIteration:
            return
        except csv.Error as e:
            raise InputFileError(path, f"line {reader.line_num}: bad CSV: {e}") from None
        if row and any(c.strip() for c in row):
            yield reader.line_num - _row_lines(row) + 1, row


def _row_lines(row: list[str]) -> int:
    return 1 + sum(c.count("\n") for c in row)


def _csv_pages(path: Path) -> Iterator[tuple[int, object]]:
    if csv.field_size_limit() < 1 << 24:
        csv.field_size_limit(min(sys.maxsize, 1 << 24))  # a wiki body can be longer than csv's 128 KB default
    header = None
    for line, row in _csv_rows_by_line(path):
        if header is None:
            header = [c.strip().lower() for c in row]
            if "title" not in header or "body" not in header:
                raise InputFileError(path, f"line {line}: a wiki CSV needs a header with title and body columns, got "
                                           f"{','.join(row)[:120]!r}")
            continue
        if len(row) != len(header):
            raise InputFileError(path, f"line {line}: {len(row)} fields, the header has {len(header)}")
        yield line, dict(zip(header, row))


def wiki_file_kind(path: Path) -> str:
    """``json``, ``jsonl`` or ``csv``: how a wiki dump is laid out, from its first character."""
    _must_exist(path)
    with path.open("rb") as f:  # only the first character counts; decode errors are named by line later
        head = f.read(4096).decode("utf-8", "ignore").lstrip("\ufeff \t\r\n")
    if not head:
        raise InputFileError(path, "empty file")
    return "json" if head[0] == "[" else "jsonl" if head[0] == "{" else "csv"


def iter_pages(path: str | Path) -> Iterator[tuple[int, dict]]:
    """(line, page record) for every page of a wiki dump (JSON array, JSON lines or CSV)."""
    path = Path(path)
    kind = wiki_file_kind(path)
    items = iter_json_array(path) if kind == "json" else _jsonl_pages(path) if kind == "jsonl" else _csv_pages(path)
    for line, obj in items:
        yield line, page_record(path, line, obj)


# --- writing ----------------------------------------------------------------------------------------


def apply_pages(db: TagDB, pages: Iterable[dict], stats: dict, overwrite: bool = False, source: str = SOURCE) -> None:
    """Write one batch of page records (``title``, ``body``, ``other_names``, ``is_deleted``)."""
    live = []
    for p in pages:
        stats["pages"] = stats.get("pages", 0) + 1
        if p["is_deleted"]:
            stats["deleted"] = stats.get("deleted", 0) + 1
        else:
            live.append(p)
    known = db.existing_names(p["title"] for p in live)
    stats["unknown_tags"] = stats.get("unknown_tags", 0) + sum(1 for p in live if p["title"] not in known)
    live = [p for p in live if p["title"] in known]
    descs = []
    for p in live:
        text = summarize(p["body"])
        if text:
            descs.append((p["title"], text))
        else:
            stats["no_description"] = stats.get("no_description", 0) + 1
    result = db.set_descriptions(descs, source=source, overwrite=overwrite, counts=True)
    for k in ("set", "unchanged", "kept"):
        stats[f"descriptions_{k}"] = stats.get(f"descriptions_{k}", 0) + result[k]
    stats["translations_added"] = stats.get("translations_added", 0) + db.add_translations(
        (p["title"], detect_language(n), n) for p in live for n in p["other_names"]
    )


def import_wiki(db: TagDB, path: str | Path, overwrite: bool = False,
                progress: Callable[[int], None] | None = None) -> dict:
    """Import a local wiki dump into ``db``. Returns counts; raises InputFileError naming file and line."""
    path = Path(path)
    stats: dict = {"format": "wiki", "pages": 0, "descriptions_set": 0, "descriptions_unchanged": 0,
                   "descriptions_kept": 0, "translations_added": 0, "unknown_tags": 0, "deleted": 0,
                   "no_description": 0}
    batch: list[dict] = []
    for _, page in iter_pages(path):
        batch.append(page)
        if len(batch) >= BATCH:
            apply_pages(db, batch, stats, overwrite)
            batch.clear()
            if progress:
                progress(stats["pages"])
    apply_pages(db, batch, stats, overwrite)
    if progress:
        progress(stats["pages"])
    return stats
