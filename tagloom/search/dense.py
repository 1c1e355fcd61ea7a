"""Dense-vector stores for the semantic index: chromadb, or an exact numpy store of our own.

Both answer the part of chromadb's collection interface the index uses: ``upsert(ids, embeddings)``,
``delete(ids)``, ``query(query_embeddings, n_results, include)`` -> ``{"ids": [[...]],
"distances": [[...]]}`` (cosine distance) and ``count()``.

Why a numpy store: the A1111/Forge WebUI pins pydantic 1 and protobuf 3.20, and chromadb does not
install beside them (docs/install.md). Brute force is exact and fast enough for a tag list: one
matrix product over 150k x 384 float32 (230 MB read, so memory-bound) per query: 3.9 ms in
../shared/notes/dependencies.md, 20 ms p50 on this busy 2-core machine (docs/search.md).
The setting ``search_store`` picks: ``auto`` (chromadb when it imports, else numpy), ``chroma``,
``numpy``. An index remembers the store it was built with.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path

import numpy as np

from tagloom import names
from tagloom.errors import InputFileError, TagLoomError
from tagloom.search import settings

STORES = names.STORES


def chroma_importable() -> bool:
    try:
        import chromadb  # noqa: F401
    except Exception:  # not installed, or broken beside the host's pins (pydantic 1: not ImportError)
        return False
    return True


def resolve_store(name: str | None = None) -> str:
    """The store a build uses: the ``search_store`` setting (or ``name``), with auto resolved."""
    name = str(name or settings.get("search_store") or "auto").strip().lower()
    if name not in STORES:
        raise TagLoomError(f"search_store must be one of {', '.join(STORES)}, got {name!r}")
    if name == "numpy":
        return name
    if chroma_importable():
        return "chroma"
    if name == "chroma" or settings.get("chroma_host"):
        raise TagLoomError("search_store is 'chroma' (or chroma_host is set), but chromadb cannot be imported here; "
                           "install chromadb or set search_store = numpy")
    return "numpy"


_CLIENTS: dict[str, object] = {}
_CLIENTS_LOCK = threading.Lock()


def chroma_collection(folder: Path, name: str, create: bool = True, fresh: bool = False):
    """The dense-vector collection: embedded PersistentClient in ``folder``, or HttpClient by setting.

    ``fresh``: open the embedded store anew. chromadb keeps one client per folder in a process, and
    its in-memory HNSW index does not see what another process (``tagloom index build`` beside a
    running host) added since; a new one loads it from disk, WAL included. Clients already handed
    out keep working on what they loaded."""
    import chromadb

    host = settings.get("chroma_host")
    key = f"http://{host}:{settings.get('chroma_port')}" if host else str(folder.resolve())
    with _CLIENTS_LOCK:
        if fresh and not host:
            _CLIENTS.pop(key, None)
            try:
                from chromadb.api.shared_system_client import SharedSystemClient

                SharedSystemClient._identifier_to_system.pop(str(folder), None)
                SharedSystemClient._identifier_to_system.pop(key, None)
            except Exception:  # another chromadb layout: the cached client is reused (a restart sees all)
                pass
        client = _CLIENTS.get(key)
        if client is None:
            try:
                if host:
                    client = chromadb.HttpClient(host=host, port=int(settings.get("chroma_port")))
                else:
                    folder.mkdir(parents=True, exist_ok=True)
                    client = chromadb.PersistentClient(path=str(folder))
            except Exception as e:
                raise TagLoomError(f"cannot open chromadb at {key}: {e}") from e
            _CLIENTS[key] = client
    try:
        if create:
            # embedding_function=None: we always pass vectors, and chromadb must never fetch a model.
            return client.get_or_create_collection(name, embedding_function=None, metadata={"hnsw:space": "cosine"})
        return client.get_collection(name, embedding_function=None)
    except Exception as e:
        raise TagLoomError(f"chromadb collection {name!r} at {key}: {e}") from e


class NumpyStore:
    """Exact cosine search over one float16 matrix kept in ``folder/dense.bin``.

    The file is a log of records (int64 id, ``dim`` float16 values): an upsert appends the rows
    (unit length), a delete appends a record with id ``-(id + 1)``; the last record of an id wins.
    Appending only is what makes the index build resumable: a stop loses at most the batch being
    written, and a record cut short by a crash is dropped when the file is next read.
    ``compact()`` (end of a build) rewrites the live rows once, atomically. Queries use a float32
    copy in memory (dim x 4 bytes a tag: 230 MB for 150k tags at 384-d).
    """

    FILE = "dense.bin"

    def __init__(self, folder: Path, dim: int):
        self.folder = Path(folder)
        self.path = self.folder / self.FILE
        self.dim = int(dim)
        self.record = np.dtype([("id", "<i8"), ("v", "<f2", (self.dim,))])
        self._lock = threading.Lock()
        # Loaded on first query, then kept up to date by reading only what was appended since
        # (a build that is still running, in this process or another): rows [0, _n) of a buffer
        # that grows; a replaced or deleted id's old row is marked dead.
        self._ids: np.ndarray | None = None
        self._matrix: np.ndarray | None = None
        self._alive: np.ndarray | None = None
        self._n = 0
        self._live = 0
        self._row_of: dict[int, int] = {}
        self._seen: tuple | None = None  # (st_dev, st_ino) of the file read
        self._offset = 0  # bytes of it read
        self._head = b""  # its first record, as read

    # -- writing -----------------------------------------------------------------------------
    def _append(self, records: np.ndarray) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        with self._lock:
            size = self.path.stat().st_size if self.path.exists() else 0
            if size % self.record.itemsize:  # a write cut short by a crash: drop the partial record
                with self.path.open("r+b") as f:
                    f.truncate(size - size % self.record.itemsize)
            with self.path.open("ab") as f:
                f.write(records.tobytes())

    def upsert(self, ids, embeddings) -> None:
        vecs = np.asarray(embeddings, dtype=np.float32).reshape(len(ids), -1)
        if vecs.shape[1] != self.dim:
            raise TagLoomError(f"{self.path}: vectors of {vecs.shape[1]} values given to a {self.dim}-d store")
        norms = np.linalg.norm(vecs, axis=1, keepdims=True)
        recs = np.zeros(len(ids), self.record)
        recs["id"] = [int(i) for i in ids]
        recs["v"] = vecs / np.where(norms > 0, norms, 1.0)
        self._append(recs)

    def delete(self, ids) -> None:
        recs = np.zeros(len(ids), self.record)
        recs["id"] = [-int(i) - 1 for i in ids]
        self._append(recs)

    def compact(self) -> None:
        """Rewrite the file with only the live rows (no-op when there is nothing dead)."""
        with self._lock:
            raw = self._read()
            live = self._live_rows(raw)
            if len(live) == len(raw):
                return
            tmp = self.path.with_name(self.FILE + ".tmp")
            raw[live].tofile(tmp)
            os.replace(tmp, self.path)
            self._matrix = None

    # -- reading -----------------------------------------------------------------------------
    def _read(self, offset: int = 0, size: int | None = None) -> np.ndarray:
        if not self.path.exists():
            return np.zeros(0, self.record)
        size = self.path.stat().st_size if size is None else size
        try:
            return np.fromfile(self.path, dtype=self.record, count=max(0, size - offset) // self.record.itemsize, offset=offset)
        except (OSError, ValueError) as e:
            raise InputFileError(self.path, f"cannot be read as the dense vector store: {e}") from e

    @staticmethod
    def _live_rows(raw: np.ndarray) -> np.ndarray:
        """Row numbers of the last record of each id, when that record is not a delete."""
        ids = raw["id"]
        key = np.where(ids >= 0, ids, -ids - 1)
        _, first_from_end = np.unique(key[::-1], return_index=True)
        last = len(key) - 1 - first_from_end
        return np.sort(last[ids[last] >= 0])

    def _load(self) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
        """(ids, vectors, alive mask or None when every row is live), up to date with the file:
        one stat per call; records appended since the last call are read and applied."""
        with self._lock:
            try:
                st = self.path.stat()
                ident, size = (st.st_dev, st.st_ino), st.st_size
            except FileNotFoundError:
                ident, size = None, 0
            size -= size % self.record.itemsize  # a record being written (or cut short) waits
            if (self._matrix is None or ident != self._seen or size < self._offset
                    or (size > self._offset and self._head != self._first_record())):
                # first load, or the file was compacted or started anew (--rebuild; a new file may
                # get a freed inode number back, hence the check of its first record)
                raw = self._read(0, size)
                live = raw[self._live_rows(raw)]
                self._ids = live["id"].copy()
                self._matrix = live["v"].astype(np.float32)
                self._n = self._live = len(live)
                self._alive = np.ones(self._n, bool)
                self._row_of = {int(i): r for r, i in enumerate(self._ids)}
                self._seen, self._offset = ident, size
                self._head = raw[:1].tobytes()
            elif size > self._offset:
                self._apply(self._read(self._offset, size))
                self._offset = size
            n = self._n
            return self._ids[:n], self._matrix[:n], (None if self._live == n else self._alive[:n])

    def _first_record(self) -> bytes:
        try:
            with self.path.open("rb") as f:
                return f.read(self.record.itemsize)
        except OSError:
            return b""

    def _apply(self, raw: np.ndarray) -> None:
        """Records appended after the loaded ones: the last record of each id wins."""
        ids = raw["id"]
        key = np.where(ids >= 0, ids, -ids - 1)
        _, first_from_end = np.unique(key[::-1], return_index=True)
        for r in np.sort(len(key) - 1 - first_from_end):
            rid = int(ids[r])
            tag = rid if rid >= 0 else -rid - 1
            row = self._row_of.get(tag)
            if rid < 0:  # delete
                if row is not None:
                    self._alive[row] = False
                    del self._row_of[tag]
                    self._live -= 1
                continue
            if row is None:
                row = self._n
                if row == len(self._matrix):  # grow by a quarter (a build appends batch by batch)
                    cap = max(64, row + row // 4)
                    self._matrix = np.concatenate([self._matrix, np.zeros((cap - row, self.dim), np.float32)])
                    self._ids = np.concatenate([self._ids, np.full(cap - row, -1, np.int64)])
                    self._alive = np.concatenate([self._alive, np.zeros(cap - row, bool)])
                self._n += 1
                self._live += 1
                self._row_of[tag] = row
                self._ids[row] = tag
                self._alive[row] = True
            self._matrix[row] = raw["v"][r]

    def count(self) -> int:
        ids, _, alive = self._load()
        return len(ids) if alive is None else int(alive.sum())

    def get(self, ids, include=None) -> dict:
        """The stored vectors of these ids (chromadb's ``get`` shape; ids not stored are left out)."""
        all_ids, matrix, alive = self._load()
        with self._lock:
            rows = [(str(i), self._row_of.get(int(i))) for i in ids]
        rows = [(i, r) for i, r in rows if r is not None and (alive is None or alive[r])]
        return {"ids": [i for i, _ in rows], "embeddings": matrix[[r for _, r in rows]] if rows else np.zeros((0, self.dim), np.float32)}

    def query(self, query_embeddings, n_results: int = 10, include=None) -> dict:
        ids, matrix, alive = self._load()
        live = len(ids) if alive is None else int(alive.sum())
        out_ids, out_dist = [], []
        for q in np.asarray(query_embeddings, dtype=np.float32).reshape(-1, self.dim):
            norm = float(np.linalg.norm(q))
            sims = matrix @ (q / norm if norm > 0 else q)
            if alive is not None:
                sims[~alive] = -np.inf
            n = min(int(n_results), live)
            top = np.argpartition(-sims, n - 1)[:n] if 0 < n < len(sims) else np.arange(n)
            top = top[np.argsort(-sims[top], kind="stable")]
            out_ids.append([str(int(i)) for i in ids[top]])
            out_dist.append([float(1.0 - s) for s in sims[top]])
        return {"ids": out_ids, "distances": out_dist}


def dense_store(folder: Path, store: str, name: str, dim: int, create: bool = True, fresh: bool = False):
    """The dense store of an index folder: ``chroma`` (embedded in ``folder/chroma`` or the
    configured server) or ``numpy`` (``folder/dense.bin``). ``fresh``: see ``chroma_collection``."""
    if store == "numpy":
        return NumpyStore(folder, dim)
    if store != "chroma":
        raise TagLoomError(f"unknown dense store {store!r} in the index info; rebuild the index (tagloom index build --rebuild)")
    if not chroma_importable():
        raise TagLoomError(f"the semantic index in {folder} was built with chromadb, which cannot be imported here; "
                           "rebuild it with the setting search_store = numpy (tagloom index build)")
    return chroma_collection(folder / "chroma", name, create=create, fresh=fresh)
