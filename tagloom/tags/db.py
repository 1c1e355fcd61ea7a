"""The tag database: one embedded SQLite file of tags, aliases, translations, descriptions and the
pack's own categories with their provenance.

Tag names are stored canonical: lower case, spaces as underscores (``school_uniform``). Danbooru
categories: 0 general, 1 artist, 3 copyright, 4 character, 5 meta; the wd taggers add 9 rating.
The pack's categories (``main_category``/``sub_category``) are filled by the LLM categorizer, with
``category_source`` telling who set them (``llm:<model>``, ``neighbors``, ``human``), the prompt
version and the time, so a run can resume and never re-ask for a tag already answered.

``description_source`` says where the description came from: ``wiki`` (the Danbooru wiki, from the
API or a dump), ``llm:<model>`` (``tagloom describe``), ``import`` (our own export imported back
without one); NULL for descriptions written before the column existed. The wiki importers replace
only their own descriptions (and empty ones) unless told to overwrite.

``changed_at`` moves whenever anything the search index embeds changes (name, aliases,
translations, description, categories), so the index rebuilds only those tags.

``content_version.n`` is a change counter kept by triggers (so it moves for any writer, the sqlite3
shell included): every insert or delete of a tag, alias or translation and every update that changes
what completion reads (name, category, post count, pack category; not descriptions) adds one. The
search engine keys the tag snapshot it persists beside the database on it and on the random
``database_id`` in ``meta`` (tagloom/search/persist.py).
"""

from __future__ import annotations

import sqlite3
import threading
import time
from pathlib import Path
from typing import Iterable, Iterator

from tagloom import config

DANBOORU_CATEGORIES = {0: "general", 1: "artist", 3: "copyright", 4: "character", 5: "meta", 9: "rating"}
CATEGORY_IDS = {v: k for k, v in DANBOORU_CATEGORIES.items()}

SCHEMA = """
CREATE TABLE IF NOT EXISTS tags (
    id INTEGER PRIMARY KEY,
    name TEXT NOT NULL UNIQUE,
    category INTEGER,
    post_count INTEGER NOT NULL DEFAULT 0,
    description TEXT,
    description_source TEXT,
    main_category TEXT,
    sub_category TEXT,
    category_confidence REAL,
    category_source TEXT,
    category_prompt_version TEXT,
    category_updated_at REAL,
    changed_at REAL NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS tags_post_count ON tags(post_count DESC);
CREATE INDEX IF NOT EXISTS tags_changed_at ON tags(changed_at);
CREATE TABLE IF NOT EXISTS aliases (
    alias TEXT PRIMARY KEY,
    tag_id INTEGER NOT NULL REFERENCES tags(id) ON DELETE CASCADE
);
CREATE INDEX IF NOT EXISTS aliases_tag ON aliases(tag_id);
CREATE TABLE IF NOT EXISTS translations (
    tag_id INTEGER NOT NULL REFERENCES tags(id) ON DELETE CASCADE,
    lang TEXT NOT NULL,
    text TEXT NOT NULL,
    PRIMARY KEY (tag_id, lang, text)
);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT);
CREATE TABLE IF NOT EXISTS content_version (id INTEGER PRIMARY KEY, n INTEGER NOT NULL);
CREATE TRIGGER IF NOT EXISTS tags_insert_version AFTER INSERT ON tags
    BEGIN UPDATE content_version SET n = n + 1 WHERE id = 1; END;
CREATE TRIGGER IF NOT EXISTS tags_update_version AFTER UPDATE OF id, name, category, post_count, main_category ON tags
    WHEN OLD.id IS NOT NEW.id OR OLD.name IS NOT NEW.name OR OLD.category IS NOT NEW.category
      OR OLD.post_count IS NOT NEW.post_count OR OLD.main_category IS NOT NEW.main_category
    BEGIN UPDATE content_version SET n = n + 1 WHERE id = 1; END;
CREATE TRIGGER IF NOT EXISTS tags_delete_version AFTER DELETE ON tags
    BEGIN UPDATE content_version SET n = n + 1 WHERE id = 1; END;
CREATE TRIGGER IF NOT EXISTS aliases_insert_version AFTER INSERT ON aliases
    BEGIN UPDATE content_version SET n = n + 1 WHERE id = 1; END;
CREATE TRIGGER IF NOT EXISTS aliases_update_version AFTER UPDATE ON aliases
    BEGIN UPDATE content_version SET n = n + 1 WHERE id = 1; END;
CREATE TRIGGER IF NOT EXISTS aliases_delete_version AFTER DELETE ON aliases
    BEGIN UPDATE content_version SET n = n + 1 WHERE id = 1; END;
CREATE TRIGGER IF NOT EXISTS translations_insert_version AFTER INSERT ON translations
    BEGIN UPDATE content_version SET n = n + 1 WHERE id = 1; END;
CREATE TRIGGER IF NOT EXISTS translations_update_version AFTER UPDATE ON translations
    BEGIN UPDATE content_version SET n = n + 1 WHERE id = 1; END;
CREATE TRIGGER IF NOT EXISTS translations_delete_version AFTER DELETE ON translations
    BEGIN UPDATE content_version SET n = n + 1 WHERE id = 1; END;
"""


def canonical(name: str) -> str:
    """``School Uniform`` -> ``school_uniform``. Kaomoji and punctuation are kept as they are."""
    return name.strip().lower().replace(" ", "_")


def default_path() -> Path:
    return config.data_dir() / "tags.sqlite"


class TagDB:
    """A connection to the tag database. Safe to share between threads (one lock per database)."""

    def __init__(self, path: str | Path | None = None):
        self.path = Path(path) if path else default_path()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.RLock()
        self.conn = sqlite3.connect(str(self.path), check_same_thread=False, timeout=30)
        self.conn.row_factory = sqlite3.Row
        self.conn.execute("PRAGMA journal_mode=WAL")
        self.conn.execute("PRAGMA synchronous=NORMAL")
        self.conn.execute("PRAGMA foreign_keys=ON")
        self.conn.executescript(SCHEMA)
        self._seed()
        self._migrate()

    def _migrate(self) -> None:
        """Columns added after a database was created (CREATE TABLE IF NOT EXISTS keeps old tables)."""
        cols = {r[1] for r in self.conn.execute("PRAGMA table_info(tags)")}
        if "description_source" not in cols:
            try:
                with self.conn:
                    self.conn.execute("ALTER TABLE tags ADD COLUMN description_source TEXT")
            except sqlite3.OperationalError as e:  # another process added it meanwhile
                if "duplicate column" not in str(e):
                    raise

    def close(self) -> None:
        self.conn.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def _seed(self) -> None:
        """The change counter's row and the database's random id, written once. Only read when they
        exist: an INSERT, even one that inserts nothing, would wait for any other writer."""
        seeded = self.conn.execute(
            "SELECT (SELECT COUNT(*) FROM content_version) + (SELECT COUNT(*) FROM meta WHERE key = 'database_id')"
        ).fetchone()[0]
        if seeded < 2:
            with self.conn:
                self.conn.execute("INSERT OR IGNORE INTO content_version(id, n) VALUES (1, 0)")
                self.conn.execute(
                    "INSERT OR IGNORE INTO meta(key, value) VALUES ('database_id', lower(hex(randomblob(16))))"
                )

    # --- writing -------------------------------------------------------------------------------
    def upsert_tags(self, rows: Iterable[dict]) -> int:
        """Insert or update tags from dicts with ``name`` and any of ``category``, ``post_count``,
        ``description`` (with ``description_source``). Fields that are None leave the stored value
        alone. Returns rows written."""
        now = time.time()
        n = 0
        with self._lock, self.conn:
            for row in rows:
                name = canonical(row["name"])
                self.conn.execute(
                    """INSERT INTO tags(name, category, post_count, description, description_source, changed_at)
                       VALUES (?, ?, COALESCE(?, 0), ?, ?, ?)
                       ON CONFLICT(name) DO UPDATE SET
                         category = COALESCE(excluded.category, tags.category),
                         post_count = CASE WHEN ? IS NULL THEN tags.post_count ELSE excluded.post_count END,
                         description = COALESCE(excluded.description, tags.description),
                         description_source = CASE WHEN excluded.description IS NULL THEN tags.description_source
                                                   ELSE excluded.description_source END,
                         changed_at = CASE WHEN tags.category IS NOT COALESCE(excluded.category, tags.category)
                                             OR tags.description IS NOT COALESCE(excluded.description, tags.description)
                                           THEN excluded.changed_at ELSE tags.changed_at END""",
                    (name, row.get("category"), row.get("post_count"), row.get("description"),
                     row.get("description_source") if row.get("description") is not None else None, now, row.get("post_count")),
                )
                n += 1
        return n

    def add_missing_tags(self, rows: Iterable[dict]) -> int:
        """Create tags (``name``, optional ``category``/``post_count``) that do not exist yet; existing
        tags are left alone (a translation file's idea of a category never overrides the list's), and
        so are names that are an alias of a tag (their translations go to that tag)."""
        now = time.time()
        n = 0
        with self._lock, self.conn:
            for row in rows:
                if self._tag_or_alias(canonical(row["name"])) is not None:
                    continue
                cur = self.conn.execute(
                    "INSERT OR IGNORE INTO tags(name, category, post_count, changed_at) VALUES (?, ?, COALESCE(?, 0), ?)",
                    (canonical(row["name"]), row.get("category"), row.get("post_count"), now),
                )
                n += cur.rowcount
        return n

    def add_aliases(self, pairs: Iterable[tuple[str, str]]) -> int:
        """(alias, tag) pairs; tags that do not exist are created with no category."""
        now = time.time()
        n = 0
        with self._lock, self.conn:
            for alias, tag in pairs:
                tag_id = self._ensure(canonical(tag), now)
                cur = self.conn.execute(
                    "INSERT OR IGNORE INTO aliases(alias, tag_id) VALUES (?, ?)", (canonical(alias), tag_id)
                )
                if cur.rowcount:
                    self.conn.execute("UPDATE tags SET changed_at=? WHERE id=?", (now, tag_id))
                    n += 1
        return n

    def add_translations(self, rows: Iterable[tuple[str, str, str]]) -> int:
        """(tag, lang, text) triples. A name that is an alias of a tag (translation lists often use
        old names: ``chinadress``) goes to that tag; other unknown names are created with no
        category (a tag list imported later fills them in)."""
        now = time.time()
        n = 0
        with self._lock, self.conn:
            for tag, lang, text in rows:
                text = text.strip()
                if not text:
                    continue
                tag_id = self._tag_or_alias(canonical(tag)) or self._ensure(canonical(tag), now)
                cur = self.conn.execute(
                    "INSERT OR IGNORE INTO translations(tag_id, lang, text) VALUES (?, ?, ?)", (tag_id, lang, text)
                )
                if cur.rowcount:
                    self.conn.execute("UPDATE tags SET changed_at=? WHERE id=?", (now, tag_id))
                    n += 1
        return n

    def set_description(self, name: str, description: str, source: str | None = None) -> None:
        """Set a tag's description (``source``: its provenance, e.g. ``llm:<model>``); ``changed_at``
        moves only when the text changes."""
        with self._lock, self.conn:
            self.conn.execute(
                """UPDATE tags SET description=?, description_source=?,
                   changed_at = CASE WHEN description IS NOT ? THEN ? ELSE changed_at END WHERE name=?""",
                (description, source, description, time.time(), canonical(name)),
            )

    def set_pack_category(
        self,
        name: str,
        main_category: str,
        sub_category: str | None,
        confidence: float | None,
        source: str,
        prompt_version: str | None = None,
    ) -> None:
        now = time.time()
        with self._lock, self.conn:
            self.conn.execute(
                """UPDATE tags SET main_category=?, sub_category=?, category_confidence=?, category_source=?,
                   category_prompt_version=?, category_updated_at=?, changed_at=? WHERE name=?""",
                (main_category, sub_category, confidence, source, prompt_version, now, now, canonical(name)),
            )

    def _tag_or_alias(self, name: str) -> int | None:
        row = self.conn.execute("SELECT id FROM tags WHERE name=?", (name,)).fetchone()
        if row is None:
            row = self.conn.execute("SELECT tag_id FROM aliases WHERE alias=?", (name,)).fetchone()
        return row[0] if row else None

    def _ensure(self, name: str, now: float) -> int:
        row = self.conn.execute("SELECT id FROM tags WHERE name=?", (name,)).fetchone()
        if row:
            return row[0]
        return self.conn.execute("INSERT INTO tags(name, changed_at) VALUES (?, ?)", (name, now)).lastrowid

    def get_meta(self, key: str, default: str | None = None) -> str | None:
        """A value from the ``meta`` table (importer cursors, index stamps)."""
        with self._lock:
            row = self.conn.execute("SELECT value FROM meta WHERE key=?", (key,)).fetchone()
        return row[0] if row else default

    def set_meta(self, key: str, value: str | None) -> None:
        with self._lock, self.conn:
            if value is None:
                self.conn.execute("DELETE FROM meta WHERE key=?", (key,))
            else:
                self.conn.execute("INSERT OR REPLACE INTO meta(key, value) VALUES (?, ?)", (key, value))

    def set_descriptions(self, pairs: Iterable[tuple[str, str]], source: str | None = None, overwrite: bool = True,
                         counts: bool = False):
        """(tag, description) pairs for tags that exist; unknown tags are skipped. Returns how many
        changed, or with ``counts`` a dict: ``set`` (text changed), ``unchanged``, ``kept`` (left alone:
        a non-empty description from another source, or of unknown source, and not ``overwrite``),
        ``unknown`` (no such tag). ``changed_at`` moves only for ``set``, so the index re-embeds
        only those tags."""
        now = time.time()
        c = {"set": 0, "unchanged": 0, "kept": 0, "unknown": 0}
        with self._lock, self.conn:
            for name, text in pairs:
                row = self.conn.execute(
                    "SELECT id, description, description_source FROM tags WHERE name=?", (canonical(name),)
                ).fetchone()
                if row is None:
                    c["unknown"] += 1
                    continue
                old, old_source = row[1], row[2]
                if not overwrite and old and old_source != source:
                    c["kept"] += 1
                    continue
                if old == text:
                    c["unchanged"] += 1
                    if old_source != source:
                        self.conn.execute("UPDATE tags SET description_source=? WHERE id=?", (source, row[0]))
                    continue
                self.conn.execute(
                    "UPDATE tags SET description=?, description_source=?, changed_at=? WHERE id=?", (text, source, now, row[0])
                )
                c["set"] += 1
        return c if counts else c["set"]

    # --- reading -------------------------------------------------------------------------------
    def existing_names(self, names: Iterable[str]) -> set[str]:
        """The canonical names among ``names`` that are tags in the database."""
        keys = list({canonical(n) for n in names})
        found: set[str] = set()
        with self._lock:
            for s in range(0, len(keys), 500):
                chunk = keys[s:s + 500]
                marks = ",".join("?" * len(chunk))
                found.update(r[0] for r in self.conn.execute(f"SELECT name FROM tags WHERE name IN ({marks})", chunk))
        return found

    def count(self) -> int:
        return self.conn.execute("SELECT COUNT(*) FROM tags").fetchone()[0]

    def get(self, name: str) -> dict | None:
        """A tag with its aliases and translations, by name or alias."""
        key = canonical(name)
        with self._lock:
            row = self.conn.execute("SELECT * FROM tags WHERE name=?", (key,)).fetchone()
            if row is None:
                row = self.conn.execute(
                    "SELECT tags.* FROM aliases JOIN tags ON tags.id = aliases.tag_id WHERE alias=?", (key,)
                ).fetchone()
            return self._full(row) if row else None

    def iter_tags(self, where: str = "", params: tuple = (), order: str = "post_count DESC") -> Iterator[dict]:
        """Every tag (optionally filtered by a SQL condition on ``tags``) with aliases and translations."""
        sql = "SELECT * FROM tags" + (f" WHERE {where}" if where else "") + f" ORDER BY {order}"
        with self._lock:
            rows = self.conn.execute(sql, params).fetchall()
            aliases: dict[int, list[str]] = {}
            for tag_id, alias in self.conn.execute("SELECT tag_id, alias FROM aliases"):
                aliases.setdefault(tag_id, []).append(alias)
            translations: dict[int, dict[str, list[str]]] = {}
            for tag_id, lang, text in self.conn.execute("SELECT tag_id, lang, text FROM translations"):
                translations.setdefault(tag_id, {}).setdefault(lang, []).append(text)
        for row in rows:
            d = dict(row)
            d["aliases"] = sorted(aliases.get(d["id"], []))
            d["translations"] = translations.get(d["id"], {})
            yield d

    def _full(self, row: sqlite3.Row) -> dict:
        d = dict(row)
        d["aliases"] = [r[0] for r in self.conn.execute("SELECT alias FROM aliases WHERE tag_id=? ORDER BY alias", (d["id"],))]
        d["translations"] = {}
        for lang, text in self.conn.execute("SELECT lang, text FROM translations WHERE tag_id=?", (d["id"],)):
            d["translations"].setdefault(lang, []).append(text)
        return d
