"""The search engine behind ``tagloom.search.suggest``: classic completion always, semantic
completion (dense + sparse + ColBERT, see ``semantic.py``) when an index has been built.

One engine per database file is cached for the process. Each call checks SQLite's
``PRAGMA data_version`` (it moves when any other connection commits) and the index's stamp file, so
an import or an index build in another thread or process is picked up on the next query without
re-reading anything when nothing changed.

The tag snapshot (names, aliases, translations and the classic index over them) persists beside the
database (``persist.py``), keyed on the database's change counter: a host start loads it instead of
building it, and a commit that changes nothing completion reads (a description, the meta table)
keeps the snapshot in memory. Hosts call ``warm_up()`` when they start, so the first popup does not
wait for even that.
"""

from __future__ import annotations

import gc
import logging
import os
import re
import sqlite3
import threading
import time
from pathlib import Path

import numpy as np

from tagloom import caches
from tagloom.search import persist, ranking
from tagloom.search import settings as search_settings
from tagloom.search.classic import ALIAS, KIND_REASON, NAME, TRANSLATION, ClassicIndex
from tagloom.search.compose import is_cjk
from tagloom.tags.db import DANBOORU_CATEGORIES, TagDB, default_path

# How literal and semantic rows share the list: ranking.py.

log = logging.getLogger("tagloom")

class _Tags:
    """One immutable snapshot of the tags and the classic index. A reload builds a new snapshot and
    swaps it in with one assignment, so a query running in another thread never sees a mix."""

    def __init__(self, conn: sqlite3.Connection):
        # Straight SQL rather than TagDB.iter_tags: this runs on the first keystroke, 140k rows.
        rows = conn.execute("SELECT id, name, category, post_count, main_category FROM tags ORDER BY id").fetchall()
        self.ids = np.array([r[0] for r in rows], dtype=np.int64)
        self.names = [r[1] for r in rows]
        self.category = [r[2] for r in rows]
        self.post_count = np.array([r[3] or 0 for r in rows], dtype=np.int64)
        self.main_category = [r[4] for r in rows]
        self.row_of = {int(i): r for r, i in enumerate(self.ids)}
        aliases: list[list[str]] = [[] for _ in rows]
        for tag_id, alias in conn.execute("SELECT tag_id, alias FROM aliases"):
            r = self.row_of.get(tag_id)
            if r is not None:
                aliases[r].append(alias)
        self.translations: list[dict] = [{} for _ in rows]
        for tag_id, lang, text in conn.execute("SELECT tag_id, lang, text FROM translations"):
            r = self.row_of.get(tag_id)
            if r is not None:
                self.translations[r].setdefault(lang, []).append(text)
        self.classic = ClassicIndex(self.names, aliases, self.post_count,
                                    [[t for ts in d.values() for t in ts] for d in self.translations])
        self.log_max = ranking.popularity_scale(int(self.post_count.max())) if rows else 1.0

    def export(self) -> dict:
        """What ``restore`` needs (persist.py writes it beside the database)."""
        return {"ids": self.ids, "post_count": self.post_count, "names": self.names, "category": self.category,
                "main_category": self.main_category, "translations": self.translations,
                "classic": self.classic.export()}

    @classmethod
    def restore(cls, data: dict) -> "_Tags":
        self = cls.__new__(cls)
        self.ids = np.asarray(data["ids"], dtype=np.int64)
        self.names = data["names"]
        self.category = data["category"]
        self.post_count = np.asarray(data["post_count"], dtype=np.int64)
        self.main_category = data["main_category"]
        self.translations = data["translations"]
        n = len(self.names)
        if not (len(self.ids) == len(self.category) == len(self.post_count) == len(self.main_category)
                == len(self.translations) == n):
            raise ValueError("tag arrays do not match")
        self.row_of = dict(zip(self.ids.tolist(), range(n)))
        self.classic = ClassicIndex.restore(self.post_count, data["classic"])
        self.log_max = ranking.popularity_scale(int(self.post_count.max())) if n else 1.0
        return self

    def composer(self):
        """The Chinese-phrase composer over this snapshot (compose.py), built on first use."""
        c = self.__dict__.get("_composer")
        if c is None:
            from tagloom.search.compose import Composer

            c = self._composer = Composer(self.names, self.category, self.post_count, self.translations)
        return c

    def pop(self, row: int) -> float:
        return float(ranking.popularity(int(self.post_count[row]), self.log_max))

    def result(self, row: int, reason: str, alias: str | None, score: float) -> dict:
        cat = self.category[row]
        return {
            "tag": self.names[row],
            "category": DANBOORU_CATEGORIES.get(cat, "unknown" if cat is None else str(cat)),
            "category_id": cat,
            "post_count": int(self.post_count[row]),
            "alias": alias,
            "reason": reason,
            "score": round(float(score), 4),
            "translations": self.translations[row],
            "main_category": self.main_category[row],
        }


class Engine:
    def __init__(self, db_path: str | Path | None = None):
        self.db_path = Path(db_path) if db_path else default_path()
        self._lock = threading.RLock()
        TagDB(self.db_path).close()  # creates the file and schema when new
        self._conn = sqlite3.connect(str(self.db_path), check_same_thread=False, timeout=30)
        self._version = None
        self._stamp = None  # persist.db_stamp of the loaded snapshot
        self.source: str | None = None  # "built" or "persisted": where the current snapshot came from
        # embedder spec -> (stamp, Event set once loaded, SemanticIndex | load error | None)
        self._semantic: dict[str | None, tuple] = {}
        self.state: _Tags
        self._load()

    def _load(self) -> None:
        conn = self._conn
        built = False
        # Hundreds of thousands of new objects: without this the cyclic GC rescans them several times.
        gc_was_enabled = gc.isenabled()
        gc.disable()
        conn.execute("BEGIN")  # one read snapshot: the data version, the stamp and the rows agree
        try:
            version = self._data_version()
            stamp = persist.db_stamp(conn)
            if stamp is not None and stamp == self._stamp:
                # a commit that touched nothing completion reads (a description, the meta table)
                self._version = version
                return
            state = persist.load(self.db_path, stamp, _Tags.restore) if stamp is not None else None
            if state is None:
                state = _Tags(conn)
                built = True
        finally:
            conn.commit()
            if gc_was_enabled:
                gc.enable()
        if built:
            persist.STATS["built"] += 1
            if stamp is not None:
                persist.save(self.db_path, stamp, state.export())
        self.state = state
        self.source = "built" if built else "persisted"
        self._version, self._stamp = version, stamp
        # The index is hundreds of thousands of long-lived objects: keep them out of the cyclic
        # GC's generations, whose full scans otherwise add multi-ms pauses to queries.
        gc.freeze()

    @property
    def names(self) -> list[str]:
        """Tag names of the current snapshot (the route checks ``len(engine.names)`` for an empty DB)."""
        return self.state.names

    @property
    def tag_count(self) -> int:
        return len(self.state.names)

    def _data_version(self):
        return self._conn.execute("PRAGMA data_version").fetchone()[0]

    def refresh(self) -> None:
        """Reload if the database changed since the last query (cheap when it did not)."""
        with self._lock:
            if self._data_version() != self._version:
                self._load()

    def semantic_index(self, embedder: str | None = None, wait: float | None = None):
        """The built semantic index for an embedder (default: the setting), or None when none is built.

        Opening one loads its embedding model (BGE-M3: 2.3 GB, seconds). That happens on a thread of
        its own, outside the engine's lock, so classic completions never queue behind it and
        concurrent queries share one load. ``wait``: seconds to wait for it (None: until loaded);
        None is returned when it is not ready by then, and the load goes on. A failed load raises
        (for a waiting caller) and is not retried until the index changes (`tagloom index build`).
        While a build stores batches the index's STAMP moves: the open index takes them in
        (``SemanticIndex.refresh``), or, where it cannot, a caller with a finite ``wait`` is
        answered by it until the reopened one is ready."""
        from tagloom.search import semantic

        stamp = semantic.index_stamp(self.db_path, embedder)
        with self._lock:
            cached = self._semantic.get(embedder)
            if cached is None or cached[0] != stamp:
                # The STAMP moves while a build stores batches (at most once a second) and when it
                # ends: an open index takes in what was stored without a reopen where it can
                # (refresh); otherwise it goes on answering until the reopened one is ready.
                prev = cached[2] if cached is not None and cached[2] is not None and not isinstance(cached[2], BaseException) else None
                if prev is None and cached is not None and len(cached) > 3:
                    prev = cached[3]
                loading = cached is not None and cached[1] is not None and not cached[1].is_set()
                if stamp is None:
                    cached = self._semantic[embedder] = (None, None, None)
                elif loading:
                    # An open is under way: it serves the newer stamp too (started over at every
                    # move, a slow open during a build would never finish).
                    cached = self._semantic[embedder] = (stamp, cached[1], None) + tuple(cached[3:])
                elif prev is not None and _refreshed(prev):
                    done = threading.Event()
                    done.set()
                    cached = self._semantic[embedder] = (stamp, done, prev)
                else:
                    done = threading.Event()
                    cached = self._semantic[embedder] = (stamp, done, None, prev)
                    threading.Thread(target=self._open_semantic, args=(embedder, stamp, done), daemon=True,
                                     name="tagloom-semantic-load").start()
        done = cached[1]
        if wait is not None and done is not None and not done.is_set() and len(cached) > 3 and cached[3] is not None:
            return cached[3]  # typing: the previous index, while the new one opens (wait=None waits for it)
        if done is not None and not done.wait(wait):
            return None
        with self._lock:
            entry = self._semantic.get(embedder)
        index = entry[2] if entry is not None and entry[0] == stamp else None
        if isinstance(index, BaseException):
            raise index
        return index

    def _open_semantic(self, embedder, stamp, done: threading.Event) -> None:
        from tagloom.search import semantic

        try:
            index = semantic.SemanticIndex.open(self.db_path, embedder)
        except Exception as e:  # noqa: BLE001 - kept (and raised to waiters), not reloaded per keystroke
            index = e
        with self._lock:
            entry = self._semantic.get(embedder)
            if entry is not None and entry[1] is done:  # still the open this entry waits for
                self._semantic[embedder] = (entry[0], done, index)
        done.set()

    def suggest(self, query: str, limit: int = 10, semantic: bool | None = None, embedder: str | None = None,
                wait_for_model: bool = False) -> list[dict]:
        """``wait_for_model``: with ``semantic`` automatic, wait until the embedding model is loaded
        instead of ``search_model_wait`` seconds (a command line has no next keystroke to serve)."""
        limit = max(1, min(int(limit), 200))
        self.refresh()
        st = self.state
        # With semantic on, look further down the literal list: a tag that matches literally must be
        # labelled (and ranked) as such even when it is not among the first `limit`.
        classic = _classic(st, query, limit if semantic is False else limit * 3)

        sem = None
        q = query.strip()
        # One CJK character is already a word (猫); one Latin letter is not worth an embedding.
        if semantic is not False and (len(q) >= 2 or any(ord(c) >= 0x2E80 for c in q)):
            try:
                # Asked for explicitly: wait for the model. Automatic: wait a little (the first
                # queries after a start), then answer with classic completions while it loads.
                wait = None if semantic or wait_for_model else float(search_settings.get("search_model_wait"))
                sem = self.semantic_index(embedder, wait=wait)
            except Exception:  # a broken index must never break typing: classic results still come
                if semantic:
                    raise
                sem = None
            if semantic and sem is None:
                from tagloom.errors import TagLoomError

                raise TagLoomError(
                    f"no semantic index for {self.db_path} (embedder {embedder or 'from settings'}): run `tagloom index build`"
                )
        if sem is None:
            classic = classic[:limit]
            n = len(classic)
            return [st.result(t, r, a, (n - i) / n + st.pop(t) * 0.01) for i, (t, r, a) in enumerate(classic)]

        span = None
        if not classic:
            # The popup's last-words fallback (currentToken in web/lib/tagloom-autocomplete-core.js):
            # a phrase that matches nothing literally ("girl with fox ears") is completed from its
            # last words ("fox ears"). The popup tries them only when the whole phrase gets no rows,
            # and semantic rows always come, so it is done here too; those rows name the words they
            # replace (``span``), so accepting one keeps the words before it.
            for tail in _tails(query):
                classic = _classic(st, tail, limit * 3)
                if classic:
                    span = tail
                    break
        reason_of = {t: (reason, alias) for t, reason, alias in classic}
        found = sem.search(query, k=max(ranking.DENSE_CANDIDATES, limit * 5))
        meaning = ranking.semantic_scores(found, st.row_of, st.pop, st.category.__getitem__)
        threshold = ranking.threshold_for(sem.embedder.slug, search_settings.get("search_semantic_threshold"))
        fused = ranking.fuse([(t, reason) for t, reason, _ in classic], meaning,
                             lambda row: int(st.post_count[row]), limit, threshold,
                             guess=span is not None and len(span.split()) == 1, tail=span is not None,
                             family=lambda row: ranking.family_of(st.names[row]))
        for row, _ in fused:
            reason_of.setdefault(row, ("semantic", None))
        out = [st.result(r, reason_of[r][0], reason_of[r][1], score) for r, score in fused]
        for res, (row, _) in zip(out, fused):
            if res["reason"] == "semantic":
                res["similarity"] = round(float(meaning[row]), 4)
        if span:
            for res in out:
                if res["reason"] != "semantic":
                    res["span"] = span
        return out


def _classic(st: "_Tags", query: str, limit: int) -> list[tuple[int, str, str | None]]:
    """Literal completions as (row, reason, the alias or translation that matched)."""
    out = []
    for h in st.classic.search(query, limit=limit):
        reason = "fuzzy" if h.fuzzy else KIND_REASON[h.kind]
        if h.exact:
            reason = {NAME: "exact", ALIAS: "alias", TRANSLATION: "translation"}[h.kind]
        out.append((h.tag, reason, h.key if h.kind in (ALIAS, TRANSLATION) else None))
    # One-typo matches are for words that match nothing as typed ("blonde hiar"); beside real
    # completions they are filler ("long ha" -> pants, from long_pants): fewer rows beat wrong rows.
    # A word inside another name ("flowr" -> fai_d._flowright) is no real completion.
    if any(reason in ("exact", "prefix", "alias", "translation") for _, reason, _ in out):
        out = [row for row in out if row[1] != "fuzzy"]
    if not out and is_cjk(query):
        # 天使翅膀: no translation as typed, but 天使 (angel) + 翅膀 (wings) -> angel_wings
        out = [(row, "translation", shown) for row, shown in st.composer().complete(query, limit)]
    return out


def _tails(query: str) -> list[str]:
    """The last three word-starts of a phrase, longest first: "a girl with long ha" -> "with long
    ha", "long ha", "ha" (the same tails as the popup's)."""
    starts = [m.end() for m in re.finditer(r"\s+", query) if m.end() < len(query)]
    return [query[i:] for i in starts][-3:]


def _refreshed(index) -> bool:
    try:
        return bool(index.refresh())
    except Exception:  # noqa: BLE001 - reopened instead
        return False


_ENGINES: dict[str, Engine] = {}
_ENGINES_LOCK = threading.Lock()


def get_engine(db_path: str | Path | None = None) -> Engine:
    """The process-wide engine for a database file (created on first use)."""
    key = os.path.abspath(str(db_path) if db_path else str(default_path()))
    with _ENGINES_LOCK:
        engine = _ENGINES.get(key)
        if engine is None:
            engine = _ENGINES[key] = Engine(key)
        return engine


def clear_cache() -> int:
    """Drop every engine (the next query loads its database's snapshot again); returns how many."""
    with _ENGINES_LOCK:
        n = len(_ENGINES)
        _ENGINES.clear()
    return n


caches.register("search engines", clear_cache)


def warm_up(db_path: str | Path | None = None) -> threading.Thread | None:
    """Load the engine for a database on a background thread; the hosts call this when they start
    (ComfyUI when the pack registers its routes, the WebUI in ``on_app_started``), so the first popup
    does not wait for the tag snapshot. When a semantic index is built (and ``search_semantic`` is not
    ``off``) its embedding model starts loading too, on its own thread. Nothing happens when the
    database does not exist yet (the first query then creates it). Returns the thread (tests join it)."""
    path = Path(db_path) if db_path else default_path()
    if not path.is_file():
        return None

    def run() -> None:
        t = time.perf_counter()
        try:
            engine = get_engine(path)
        except Exception:  # noqa: BLE001 - the first query will try again and report it
            log.exception("tagloom: warming up the tag search for %s failed", path)
            return
        log.info("tagloom: tag search ready: %s tags %s in %.2f s", f"{engine.tag_count:,}",
                 "loaded" if engine.source == "persisted" else "indexed", time.perf_counter() - t)
        if str(search_settings.get("search_semantic")).lower() != "off":
            try:
                engine.semantic_index(None, wait=0)  # starts the model load when an index exists
            except Exception:  # noqa: BLE001 - a broken index is reported by the queries that use it
                log.warning("tagloom: the semantic index for %s could not be opened", path, exc_info=True)

    thread = threading.Thread(target=run, daemon=True, name="tagloom-search-warmup")
    thread.start()
    return thread
