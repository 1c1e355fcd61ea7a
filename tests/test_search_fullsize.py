"""Search code paths that normally run only on a GPU or at full size (150k tags, the real BGE-M3),
exercised here on CPU with the same functions: batches larger than chromadb accepts in one call,
the half-precision M3 path, a ColBERT file cut short by a crash, and the real BGE-M3 download layout."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from tagloom.search.embedders import Encoded, M3Embedder  # noqa: E402
from tiny_m3 import make_tiny_m3  # noqa: E402

TEXTS = ["【general】twintails | aka twin tails | 中文: 双马尾", "【artist】wlop", "【general】long hair | aka longhair",
         "【character】hatsune miku | aka miku", "【general】school uniform | aka seifuku", "a"]


@pytest.fixture(scope="module")
def tiny_m3(tmp_path_factory):
    return make_tiny_m3(tmp_path_factory.mktemp("m3") / "tiny-bge-m3", TEXTS)


def test_store_splits_gpu_sized_batches_for_chromadb(tmp_path):
    """A GPU build with --batch-size above chromadb's max_batch_size (5,461) stores every row."""
    pytest.importorskip("chromadb")
    from tagloom.search.build import _store
    from tagloom.search.semantic import chroma_collection, open_index_db

    n, dim = 5600, 4
    coll = chroma_collection(tmp_path / "chroma", "tagloom-test-bigbatch")
    conn = open_index_db(tmp_path)
    ids = list(range(1, n + 1))
    rng = np.random.default_rng(0)
    enc = Encoded(rng.standard_normal((n, dim)).astype(np.float32))
    _store(coll, conn, tmp_path / "colbert.f16", dim, {i: "h" for i in ids}, ids, enc)
    assert coll.count() == n
    assert conn.execute("SELECT COUNT(*) FROM entries").fetchone()[0] == n
