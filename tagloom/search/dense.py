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

from tagloom.errors import InputFileError, TagLoomError
from tagloom.search import settings

STORES = ("auto", "chroma", "numpy")


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


def chroma_collection(folder: Path, name: str, create: bool = True):
    """The dense-vector collection: embedded PersistentClient in ``folder``, or HttpClient by setting."""
    import chromadb

    host = settings.get("chroma_host")
    key = f"http://{host}:{settings.get('chroma_port')}" if host else str(folder.resolve())
    with _CLIENTS_LOCK:
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
        self._ids: np.ndarray | None = None  # live ids, loaded on first query
        self._matrix: np.ndarray | None = None

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
            self._ids = self._matrix = None

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
            self._ids = self._matrix = None

    # -- reading -----------------------------------------------------------------------------
    def _read(self) -> np.ndarray:
        if not self.path.exists():
            return np.zeros(0, self.record)
        size = self.path.stat().st_size
        try:
            return np.fromfile(self.path, dtype=self.record, count=size // self.record.itemsize)
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

    def _load(self) -> tuple[np.ndarray, np.ndarray]:
        with self._lock:
            if self._matrix is None:
                raw = self._read()
                live = raw[self._live_rows(raw)]
                self._ids = live["id"].copy()
                self._matrix = live["v"].astype(np.float32)
            return self._ids, self._matrix

    def count(self) -> int:
        return len(self._load()[0])

    def query(self, query_embeddings, n_results: int = 10, include=None) -> dict:
        ids, matrix = self._load()
        out_ids, out_dist = [], []
        for q in np.asarray(query_embeddings, dtype=np.float32).reshape(-1, self.dim):
            norm = float(np.linalg.norm(q))
            sims = matrix @ (q / norm if norm > 0 else q)
            n = min(int(n_results), len(sims))
            top = np.argpartition(-sims, n - 1)[:n] if 0 < n < len(sims) else np.arange(n)
            top = top[np.argsort(-sims[top], kind="stable")]
            out_ids.append([str(int(i)) for i in ids[top]])
            out_dist.append([float(1.0 - s) for s in sims[top]])
        return {"ids": out_ids, "distances": out_dist}


def dense_store(folder: Path, store: str, name: str, dim: int, create: bool = True):
    """The dense store of an index folder: ``chroma`` (embedded in ``folder/chroma`` or the
    configured server) or ``numpy`` (``folder/dense.bin``)."""
    if store == "numpy":
        return NumpyStore(folder, dim)
    if store != "chroma":
        raise TagLoomError(f"unknown dense store {store!r} in the index info; rebuild the index (tagloom index build --rebuild)")
    if not chroma_importable():
        raise TagLoomError(f"the semantic index in {folder} was built with chromadb, which cannot be imported here; "
                           "rebuild it with the setting search_store = numpy (tagloom index build)")
    return chroma_collection(folder / "chroma", name, create=create)
