"""The semantic tag index: storage and querying.

One folder per (tag database, embedder): ``<db folder>/index/<db name>/<embedder slug>/`` holding

- dense vectors (``dense.py``, setting ``search_store``): ``chroma/``, an embedded chromadb
  (``PersistentClient``), or a collection on a chromadb server when the ``chroma_host`` setting is
  set (``HttpClient``); embeddings are always passed explicitly, since chromadb would otherwise try
  to download its own default model. Or, where chromadb cannot be installed (the A1111/Forge
  WebUI), ``dense.bin``: our exact numpy store.
- ``index.sqlite``: ``entries`` (tag id, hash of the embedded text, where its ColBERT vectors lie) and,
  for embedders with lexical weights (BGE-M3), ``postings`` — our own sparse inverted index
  ``(token_id, tag_id, weight)`` indexed on ``token_id`` (local chromadb has no sparse vectors).
- ``colbert.f16``: ColBERT token vectors, float16, appended row after row and memory-mapped for
  reading; used only to re-rank the dense and sparse top candidates (MaxSim).
- ``STAMP``: rewritten at the end of every build; the search engine reopens the index when it moves.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
import threading
from collections import OrderedDict
from pathlib import Path

import numpy as np

from tagloom.errors import TagLoomError
from tagloom.search.dense import chroma_collection, dense_store  # noqa: F401 (chroma_collection: re-exported)

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
"""


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


class SemanticIndex:
    """A built index, opened for querying (one per engine; thread-safe)."""

    def __init__(self, db_path, embedder_spec: str | None, folder: Path):
        from tagloom.search.embedders import get_embedder

        self.db_path = Path(db_path)
        self.folder = folder
        self.conn = open_index_db(folder)
        self.info = {k: json.loads(v) for k, v in self.conn.execute("SELECT key, value FROM info")}
        self.spec = embedder_spec or self.info.get("spec")
        self.embedder = get_embedder(self.info.get("spec") if embedder_spec is None else embedder_spec)
        # Indexes from before the numpy store have no "store" key: they are chromadb ones.
        self.store = self.info.get("store", "chroma")
        self.collection = dense_store(folder, self.store, self.info.get("collection") or collection_name(self.db_path, self.embedder.slug),
                                      int(self.info.get("dim") or self.embedder.dim), create=False)
        self.count = int(self.info.get("count", 0))
        self._colbert = None
        cpath = folder / "colbert.f16"
        rows = cpath.stat().st_size // (2 * self.embedder.dim) if cpath.is_file() else 0
        if self.embedder.has_colbert and rows:
            # Whole rows only: a build killed mid-write leaves a partial row at the end (the next
            # build drops it), which a plain reshape would refuse, losing the semantic channel.
            self._colbert = np.memmap(cpath, dtype=np.float16, mode="r", shape=(rows, self.embedder.dim))
        self._lock = threading.Lock()
        # The popups ask again for the same text (re-focus, debounced retries): keep recent query
        # encodings, which are most of a semantic query's cost on CPU.
        self._qcache: OrderedDict[str, object] = OrderedDict()

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
        """Tag ids ranked by each channel: ``dense``, ``sparse`` (M3), ``colbert`` (M3, re-ranks
        the union of the dense and sparse top ``rerank``)."""
        enc = self._encode_query(query)
        n = min(k, self.count)
        out: dict[str, list[int]] = {}
        if n <= 0:
            return out
        res = self.collection.query(query_embeddings=[enc.dense[0].tolist()], n_results=n, include=["distances"])
        out["dense"] = [int(i) for i in res["ids"][0]]
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
