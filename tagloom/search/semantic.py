"""The semantic tag index: storage and querying.

One folder per (tag database, embedder): ``<db folder>/index/<db name>/<embedder slug>/`` holding

- dense vectors (``dense.py``, setting ``search_store``): ``chroma/``, an embedded chromadb
  (``PersistentClient``), or a collection on a chromadb server when the ``chroma_host`` setting is
  set (``HttpClient``); embeddings are always passed explicitly, since chromadb would otherwise try
  to download its own default model. Or, where chromadb cannot be installed (the A1111/Forge
  WebUI), ``dense.bin``: our exact numpy store.
- ``index.sqlite``: ``entries`` (tag id, hash of the embedded text, where its ColBERT vectors lie),
  for embedders with lexical weights (BGE-M3) ``postings`` — our own sparse inverted index
  ``(token_id, tag_id, weight)`` indexed on ``token_id`` (local chromadb has no sparse vectors) —
  and ``aspects`` (aspects.py: the popular general tags' names and aliases embedded on their own,
  float32 rows in one blob per tag, searched with the head).
- ``colbert.f16``: ColBERT token vectors, float16, appended row after row and memory-mapped for
  reading; used only to re-rank the dense and sparse top candidates (MaxSim).
- ``STAMP``: JSON ``{count, total, target, building, pid, updated_at, built_at}``, written when a
  build starts, at most once a second while it stores batches, and when it ends; an index is
  searchable as soon as it exists (a build still running, stopped or killed leaves what it stored
  usable). The search engine refreshes (numpy store, or a build in the same process) or reopens the
  index when it moves; ``index_progress`` reads how far the build is.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import sqlite3
import threading
import time
from collections import OrderedDict
from pathlib import Path
from typing import NamedTuple

import numpy as np

from tagloom.errors import TagLoomError
from tagloom.search.aspects import best_of, margin_for
from tagloom.search.ranking import POP_PRIOR, popularity, popularity_scale
from tagloom.search.embedders import unit_rows
from tagloom.search.dense import chroma_collection, dense_store  # noqa: F401 (chroma_collection: re-exported)

log = logging.getLogger("tagloom")

INDEX_SCHEMA = """
CREATE TABLE IF NOT EXISTS info (key TEXT PRIMARY KEY, value TEXT);
CREATE TABLE IF NOT EXISTS entries (
    tag_id INTEGER PRIMARY KEY,
    hash TEXT NOT NULL,
    c_start INTEGER,
    c_len INTEGER
);
CREATE TABLE IF NOT EXISTS postings (token_id INTEGER NOT NULL, tag_id INTEGER NOT NULL, weight REAL NOT NULL);
CREATE INDEX IF NOT EXISTS postings_token ON postings(token_id);
CREATE INDEX IF NOT EXISTS postings_tag ON postings(tag_id);
CREATE TABLE IF NOT EXISTS aspects (tag_id INTEGER PRIMARY KEY, hash TEXT NOT NULL, vectors BLOB NOT NULL);
"""

# The most popular tags, searched exactly (``SemanticIndex._load_head``): 20k covers every tag with
# more than ~440 posts in the 140k list; 20k x 384 float32 is 30 MB, a query 2-4 ms.
HEAD_SIZE = 20_000
HEAD_CANDIDATES = 200


def index_dir(db_path, embedder: str | None = None) -> Path:
    from tagloom.search.embedders import slug_for
    from tagloom.tags.db import default_path

    db_path = Path(db_path) if db_path else default_path()
    return db_path.parent / "index" / db_path.stem / slug_for(embedder)


def index_stamp(db_path, embedder: str | None = None):
    """What changes when the index for this database and embedder is rebuilt; None if none built."""
    try:
        st = (index_dir(db_path, embedder) / "STAMP").stat()
    except FileNotFoundError:
        return None
    return (st.st_mtime_ns, st.st_size)


_PROGRESS_CACHE: dict[Path, tuple] = {}


def index_progress(db_path, embedder: str | None = None) -> dict | None:
    """How far the index for this database and embedder is: ``{embedded, total, target, building,
    updated_at}`` from its STAMP (None when no index exists). ``building`` is true while the build
    that wrote it still runs (a build killed outright leaves ``building`` in the file: the process
    check catches that). Cheap enough for every keystroke: one stat, the file is read when it moved."""
    path = index_dir(db_path, embedder) / "STAMP"
    try:
        st = path.stat()
    except OSError:
        return None
    key = (st.st_mtime_ns, st.st_size)
    hit = _PROGRESS_CACHE.get(path)
    if hit is not None and hit[0] == key:
        data = hit[1]
    else:
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            data = {}
        if not isinstance(data, dict):  # a STAMP from before (plain JSON of built_at and count) is a dict too
            data = {}
        _PROGRESS_CACHE[path] = (key, data)
    count = int(data.get("count") or 0)
    total = int(data.get("total") or count)
    building = bool(data.get("building")) and _running(data.get("pid"), data.get("updated_at"))
    return {"embedded": count, "total": total, "target": int(data.get("target") or total), "building": building,
            "updated_at": data.get("updated_at") or data.get("built_at")}


def _ident(path: Path):
    try:
        st = path.stat()
    except OSError:
        return None
    return (st.st_dev, st.st_ino)


def _running(pid, updated_at) -> bool:
    """Is the build that wrote a STAMP still running? Its process exists (POSIX); elsewhere, it
    wrote within the last ten minutes (it rewrites the STAMP after every stored batch)."""
    if not pid:
        return False
    if os.name == "posix":
        try:
            os.kill(int(pid), 0)
        except ProcessLookupError:
            return False
        except (PermissionError, OSError, ValueError):
            pass
        return True
    return bool(updated_at) and time.time() - float(updated_at) < 600


def collection_name(db_path, slug: str) -> str:
    # chromadb names: 3-512 chars of [a-zA-Z0-9._-]; a server may hold several users' databases.
    digest = hashlib.sha1(str(Path(db_path).resolve()).encode()).hexdigest()[:10]
    return f"tagloom-{slug}-{digest}"[:500]


def open_index_db(folder: Path) -> sqlite3.Connection:
    folder.mkdir(parents=True, exist_ok=True)
    conn = sqlite3.connect(str(folder / "index.sqlite"), check_same_thread=False, timeout=30)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=NORMAL")
    conn.executescript(INDEX_SCHEMA)
    return conn


def sparse_search(conn: sqlite3.Connection, weights: dict[int, float], k: int) -> list[tuple[int, float]]:
    """Tags by sum of q_w * d_w over shared tokens, best first."""
    if not weights:
        return []
    items = sorted(weights.items(), key=lambda kv: -kv[1])[:32]
    values = ",".join("(?, ?)" for _ in items)
    params = [x for kv in items for x in kv]
    sql = (f"WITH q(tok, qw) AS (VALUES {values}) "
           "SELECT p.tag_id, SUM(p.weight * q.qw) AS s FROM q JOIN postings p ON p.token_id = q.tok "
           "GROUP BY p.tag_id ORDER BY s DESC LIMIT ?")
    return [(int(t), float(s)) for t, s in conn.execute(sql, params + [k])]


def maxsim(q: np.ndarray, d: np.ndarray) -> float:
    """ColBERT late interaction as BGE-M3 scores it: mean over query tokens of the best match."""
    if len(q) == 0 or len(d) == 0:
        return 0.0
    return float((q.astype(np.float32) @ d.astype(np.float32).T).max(axis=1).mean())


class _Head(NamedTuple):
    """The most popular tags, searched exactly (``SemanticIndex._load_head``)."""

    ids: np.ndarray  # tag ids
    matrix: np.ndarray  # their entry vectors, unit length
    pop: np.ndarray  # popularity prior input, 0..1
    aspects: tuple | None  # (head row of each aspect vector, unit vectors, margin): aspects.py
    aspects_at: object  # info["aspects_at"] when the aspects were read (a build moves it)


class SemanticIndex:
    """A built index, opened for querying (one per engine; thread-safe)."""

    def __init__(self, db_path, embedder_spec: str | None, folder: Path):
        from tagloom.search.embedders import get_embedder

        t0 = time.monotonic()
        self.db_path = Path(db_path)
        self.folder = folder
        self.conn = open_index_db(folder)
        self._db_ident = _ident(folder / "index.sqlite")  # a --rebuild makes a new file: reopen then
        self.info = {k: json.loads(v) for k, v in self.conn.execute("SELECT key, value FROM info")}
        self.spec = embedder_spec or self.info.get("spec")
        self.embedder = get_embedder(self.info.get("spec") if embedder_spec is None else embedder_spec)
        # Indexes from before the numpy store have no "store" key: they are chromadb ones.
        self.store = self.info.get("store", "chroma")
        self.collection = dense_store(folder, self.store, self.info.get("collection") or collection_name(self.db_path, self.embedder.slug),
                                      int(self.info.get("dim") or self.embedder.dim), create=False,
                                      fresh=self._built_elsewhere())
        self.count = int(self.info.get("count", 0))  # as of the last build's end; queries ask the store
        self._colbert = None
        self._colbert_rows = 0
        self._lock = threading.Lock()
        self._map_colbert()
        self._opened_at = time.monotonic()
        self._open_seconds = self._opened_at - t0
        # The popups ask again for the same text (re-focus, debounced retries): keep recent query
        # encodings, which are most of a semantic query's cost on CPU.
        self._qcache: OrderedDict[str, object] = OrderedDict()
        self._head: _Head | None = None
        self._head_at = 0.0
        self._head_want = 0  # how many tags the head asked the store for (fewer came: a build is filling it)
        self._head_stamp = None  # the index STAMP when the head was read
        self._load_head()

    def _built_elsewhere(self) -> bool:
        """Was the STAMP written by another process? (Then an embedded chromadb client this process
        already holds does not see the new vectors: it is opened afresh.)"""
        try:
            pid = json.loads((self.folder / "STAMP").read_text(encoding="utf-8")).get("pid")
        except (OSError, ValueError, AttributeError):
            return True
        return pid != os.getpid()

    def _map_colbert(self) -> None:
        cpath = self.folder / "colbert.f16"
        rows = cpath.stat().st_size // (2 * self.embedder.dim) if cpath.is_file() else 0
        if self.embedder.has_colbert and rows and rows != self._colbert_rows:
            # Whole rows only: a build killed mid-write leaves a partial row at the end (the next
            # build drops it), which a plain reshape would refuse, losing the semantic channel.
            self._colbert = np.memmap(cpath, dtype=np.float16, mode="r", shape=(rows, self.embedder.dim))
            self._colbert_rows = rows

    def _load_head(self) -> None:
        """Keep the vectors of the ``HEAD_SIZE`` most popular tags in memory for an exact search.

        The popularity prior (ranking.py) can lift a popular tag from far down the cosine ranking
        ("two ponytails": ``twintails`` is about the 600th nearest of 140k), beyond what an
        approximate top-k of the store returns; searching the head exactly finds it (measured:
        the same recall as scoring all 140k)."""
        self._head_at = time.monotonic()
        self._head_stamp = index_stamp(self.db_path, self.spec)
        try:
            conn = sqlite3.connect(f"file:{self.db_path}?mode=ro", uri=True, timeout=30)
            try:
                rows = conn.execute("SELECT id, post_count FROM tags ORDER BY post_count DESC LIMIT ?", (HEAD_SIZE,)).fetchall()
                top = conn.execute("SELECT MAX(post_count) FROM tags").fetchone()[0] or 0
            finally:
                conn.close()
        except sqlite3.Error:
            return  # no head: the store's neighbours alone (what a query gets anyway)
        posts = {int(i): int(c or 0) for i, c in rows}
        self._head_want = len(posts)
        ids, vecs = [], []
        keys = [str(i) for i in posts]
        try:
            for i in range(0, len(keys), 2000):
                got = self.collection.get(ids=keys[i:i + 2000], include=["embeddings"])
                ids += [int(t) for t in got["ids"]]
                vecs.append(np.asarray(got["embeddings"], dtype=np.float32).reshape(-1, self.embedder.dim))
        except Exception:  # noqa: BLE001 - a store that cannot list vectors still answers queries
            log.warning("tagloom: the popular tags' vectors could not be read from %s; "
                        "searching the store alone", self.folder, exc_info=True)
            self._head, self._head_want = None, 0
            return
        if not ids:
            self._head = None
            return
        matrix = unit_rows(np.concatenate(vecs))
        pop = popularity(np.array([posts[t] for t in ids], dtype=np.float64), popularity_scale(top))
        self._head = _Head(np.asarray(ids, dtype=np.int64), matrix, pop.astype(np.float32), self._load_aspects(ids),
                           self.info.get("aspects_at"))

    def _load_aspects(self, head_ids: list[int]) -> tuple | None:
        """The aspect vectors of the head's tags (aspects.py), when the embedder has a margin."""
        margin = margin_for(self.embedder.slug)
        if margin is None:
            return None
        row = {t: r for r, t in enumerate(head_ids)}
        owner, vecs = [], []
        try:
            with self._lock:
                found = self.conn.execute("SELECT tag_id, vectors FROM aspects").fetchall()
        except sqlite3.Error:  # an index from before aspects, opened read-only
            return None
        for tag_id, blob in found:
            r = row.get(int(tag_id))
            v = np.frombuffer(blob, dtype=np.float32)
            if r is None or not len(v) or len(v) % self.embedder.dim:
                continue
            v = v.reshape(-1, self.embedder.dim)
            owner += [r] * len(v)
            vecs.append(v)
        if not vecs:
            return None
        return np.asarray(owner, dtype=np.int64), unit_rows(np.concatenate(vecs)), margin

    def _head_due(self) -> bool:
        """Read the head again? Only when the store lacked some of its tags and has stored more since:
        at once after a build ended, every 30 s while one runs (it embeds the most popular first).
        A partial index (``--limit``) that no build is growing is never read again."""
        have = len(self._head.ids) if self._head is not None else 0
        if have >= self._head_want or index_stamp(self.db_path, self.spec) == self._head_stamp:
            return False
        building = (index_progress(self.db_path, self.spec) or {}).get("building")
        return not building or time.monotonic() - self._head_at > 30

    def _head_search(self, q: np.ndarray, k: int) -> tuple[list[int], list[float]]:
        """The head's best ``k`` by cosine plus the popularity prior: (ids, cosines). A tag's cosine
        is its entry's or, when higher, its best aspect's less the margin (aspects.py)."""
        if self._head_due():
            self._load_head()
        head = self._head
        if head is None:
            return [], []
        at = self.info.get("aspects_at")
        if head.aspects_at != at:  # a build stored aspects since (refresh read its info)
            head = self._head = head._replace(aspects=self._load_aspects([int(t) for t in head.ids]), aspects_at=at)
        q = unit_rows(q)[0]
        sims = head.matrix @ q
        if head.aspects is not None:
            owner, vecs, margin = head.aspects
            sims = best_of(sims, vecs @ q, owner, margin)
        score = sims + POP_PRIOR * head.pop
        n = min(k, len(head.ids))
        top = np.argpartition(-score, n - 1)[:n] if n < len(head.ids) else np.arange(n)
        top = top[np.argsort(-score[top], kind="stable")]
        return [int(t) for t in head.ids[top]], [float(x) for x in sims[top]]

    def refresh(self) -> bool:
        """The STAMP moved (a build stored more, or finished): take in what changed without
        reopening, when that is possible — True when done, False when the caller must reopen (the
        index was rebuilt with another store or model, or chromadb vectors were written by another
        process, which an open chromadb client does not see)."""
        try:
            info = {k: json.loads(v) for k, v in self.conn.execute("SELECT key, value FROM info")}
        except sqlite3.Error:
            return False
        same = all(info.get(k) == self.info.get(k) for k in ("spec", "store", "dim", "collection"))
        if not same or _ident(self.folder / "index.sqlite") != self._db_ident:
            return False
        if self.store != "numpy" and self._built_elsewhere():
            # Only a reopen shows another process's chromadb writes, and it loads the whole HNSW
            # index: while that build runs, at most every 20 opening times (5 s at least); when it
            # has ended, at once.
            building = (index_progress(self.db_path, self.spec) or {}).get("building")
            if not building or time.monotonic() - self._opened_at > max(5.0, 20 * self._open_seconds):
                return False
        with self._lock:
            self.info = info
            self.count = int(info.get("count", 0))
            self._map_colbert()
        return True

    def _encode_query(self, query: str):
        with self._lock:
            hit = self._qcache.get(query)
            if hit is not None:
                self._qcache.move_to_end(query)
                return hit
        enc = self.embedder.encode([query], is_query=True)
        with self._lock:
            self._qcache[query] = enc
            while len(self._qcache) > 256:
                self._qcache.popitem(last=False)
        return enc

    @classmethod
    def open(cls, db_path, embedder: str | None = None) -> "SemanticIndex | None":
        folder = index_dir(db_path, embedder)
        if not (folder / "STAMP").is_file():
            return None
        return cls(db_path, embedder, folder)

    def search(self, query: str, k: int = 50, rerank: int = 30) -> dict[str, list[int]]:
        """Tag ids ranked by each channel: ``dense`` (with ``dense_sim``, their cosine
        similarities), ``head`` (the most popular tags searched exactly, ranked with the popularity
        prior; ``head_sim``: their cosines), ``sparse`` (M3), ``colbert`` (M3, re-ranks the union of the dense and sparse
        top ``rerank``)."""
        enc = self._encode_query(query)
        out: dict[str, list[int]] = {}
        # The store clamps n_results to what it holds: a build still running grows it batch by batch.
        n = k
        if self.store != "numpy" and self.count == 0 and self.collection.count() == 0:
            return out  # a first build that has stored nothing yet (chromadb's count: only until one ended)
        res = self.collection.query(query_embeddings=[enc.dense[0].tolist()], n_results=n, include=["distances"])
        out["dense"] = [int(i) for i in res["ids"][0]]
        out["dense_sim"] = [1.0 - float(d) for d in res["distances"][0]]  # both stores: cosine distance
        out["head"], out["head_sim"] = self._head_search(np.asarray(enc.dense[0], dtype=np.float32), HEAD_CANDIDATES)
        with self._lock:
            if self.embedder.has_sparse and enc.sparse is not None:
                out["sparse"] = [t for t, _ in sparse_search(self.conn, enc.sparse[0], n)]
            if self._colbert is not None and enc.colbert is not None:
                cands = list(dict.fromkeys(out["dense"][:rerank] + out.get("sparse", [])[:rerank]))
                if cands:
                    marks = ",".join("?" * len(cands))
                    where = dict((int(t), (s, ln)) for t, s, ln in self.conn.execute(
                        f"SELECT tag_id, c_start, c_len FROM entries WHERE tag_id IN ({marks})", cands))
                    qv = enc.colbert[0]
                    scored = [(maxsim(qv, self._colbert[s:s + ln]), t) for t, (s, ln) in where.items() if s is not None]
                    out["colbert"] = [t for _, t in sorted(scored, key=lambda x: -x[0])]
        return out
