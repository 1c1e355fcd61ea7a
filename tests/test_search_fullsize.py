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


def test_bge_m3_download_fetches_the_encoder_weights(tmp_path, tiny_m3, monkeypatch):
    """BAAI/bge-m3 ships its encoder as pytorch_model.bin only. The hub cannot be reached here, so a
    fake snapshot_download serves a folder in that layout, filtered by huggingface_hub's own
    allow_patterns matching (a fake: no network in tests)."""
    import shutil

    import huggingface_hub
    from huggingface_hub.utils import filter_repo_objects

    from tagloom.search.embedders import resolve_m3_path

    hub = tmp_path / "hub-bge-m3"
    shutil.copytree(tiny_m3, hub, ignore=shutil.ignore_patterns("model.safetensors"))
    from transformers import AutoModel

    torch.save(AutoModel.from_pretrained(str(tiny_m3)).state_dict(), hub / "pytorch_model.bin")
    (hub / "onnx").mkdir()
    (hub / "onnx" / "model.onnx_data").write_bytes(b"\0" * 16)  # 2 GB in the real repo: must not come
    asked = []

    def fake_snapshot_download(repo_id, allow_patterns=None, local_dir=None, **kw):
        asked.append(repo_id)
        files = [str(p.relative_to(hub)) for p in hub.rglob("*") if p.is_file()]
        for f in filter_repo_objects(files, allow_patterns=allow_patterns):
            (local_dir / f).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(hub / f, local_dir / f)
        return str(local_dir)

    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake_snapshot_download)
    monkeypatch.setenv("TAGLOOM_HF_OFFLINE", "0")
    # A folder left by a download without the weights is completed, not used as it is.
    from tagloom import config

    partial = config.models_dir() / "bge-m3"
    partial.mkdir(parents=True)
    shutil.copy(hub / "config.json", partial / "config.json")
    path = resolve_m3_path("bge-m3")
    assert asked == ["BAAI/bge-m3"] and (path / "pytorch_model.bin").is_file()
    assert not (path / "onnx" / "model.onnx_data").exists()
    emb = M3Embedder("bge-m3", path, device="cpu")
    assert emb.encode(TEXTS[:2]).dense.shape == (2, emb.dim)


def _three_tag_db(tmp_path, tiny_m3):
    """A 3-tag database and the tiny M3's embedder spec, with the engine cache cleared."""
    from tagloom.search.engine import clear_cache
    from tagloom.tags import TagDB

    db_path = tmp_path / "tags.sqlite"
    with TagDB(db_path) as db:
        db.upsert_tags({"name": n, "category": 0, "post_count": 10 - i} for i, n in enumerate(["twintails", "long_hair", "wlop"]))
    clear_cache()
    return db_path, f"m3:{tiny_m3}"


def test_colbert_file_cut_short_by_a_crash_still_opens(tmp_path, tiny_m3):
    """A build killed while appending ColBERT rows (gigabytes at full size) leaves a partial row;
    the built index must still open and re-rank, and the next build must drop the partial row."""
    pytest.importorskip("chromadb")
    from tagloom.search.build import build_index
    from tagloom.search.engine import clear_cache
    from tagloom.search.semantic import SemanticIndex, index_dir
    from tagloom.tags import TagDB

    db_path, spec = _three_tag_db(tmp_path, tiny_m3)
    build_index(db_path, spec, device="cpu")
    cpath = index_dir(db_path, spec) / "colbert.f16"
    size = cpath.stat().st_size
    with cpath.open("ab") as f:
        f.write(b"\1" * 37)  # part of a row: the crash
    found = SemanticIndex.open(db_path, spec).search("twin tails", k=3)
    assert len(found["colbert"]) == 3
    with TagDB(db_path) as db:
        db.set_description("wlop", "An artist.")
    assert build_index(db_path, spec, device="cpu")["embedded"] == 1
    dim = SemanticIndex.open(db_path, spec).embedder.dim
    assert (cpath.stat().st_size - size) % (2 * dim) == 0
    clear_cache()


def test_m3_half_precision_path_on_cpu(tiny_m3):
    """The CUDA build runs M3 in fp16 (model, heads, padding mask in half; results back in float32).
    The same function with fp16=True on CPU runs those lines here and must agree with fp32."""
    full = M3Embedder("m3:fp32", tiny_m3, device="cpu")
    half = M3Embedder("m3:fp16", tiny_m3, device="cpu", fp16=True)
    assert half.model.dtype == torch.float16 and half.sparse_linear.weight.dtype == torch.float16
    a, b = full.encode(TEXTS, batch_size=4), half.encode(TEXTS, batch_size=4)
    assert b.dense.dtype == np.float32 and b.colbert[0].dtype == np.float16
    assert np.min(np.sum(a.dense * b.dense, axis=1)) > 0.999
    for sa, sb in zip(a.sparse, b.sparse):
        assert all(abs(sa.get(t, 0.0) - sb.get(t, 0.0)) < 0.1 for t in sa.keys() | sb.keys())
    for ca, cb in zip(a.colbert, b.colbert):
        assert ca.shape == cb.shape
        np.testing.assert_allclose(ca.astype(np.float32), cb.astype(np.float32), atol=2e-2)


def test_store_switch_does_not_keep_dead_colbert_rows(tmp_path, tiny_m3, monkeypatch):
    """Changing search_store embeds every tag again; the ColBERT file (3 GB at full size) and the
    postings must not keep the previous rows, nor postings of tags deleted meanwhile."""
    pytest.importorskip("chromadb")
    from tagloom.search.build import build_index
    from tagloom.search.engine import clear_cache
    from tagloom.search.semantic import SemanticIndex, index_dir, open_index_db
    from tagloom.tags import TagDB

    db_path, spec = _three_tag_db(tmp_path, tiny_m3)
    monkeypatch.setenv("TAGLOOM_SEARCH_STORE", "numpy")
    build_index(db_path, spec, device="cpu")
    with TagDB(db_path) as db:
        db.conn.execute("DELETE FROM tags WHERE name='wlop'")
        db.conn.commit()
    monkeypatch.setenv("TAGLOOM_SEARCH_STORE", "chroma")
    assert build_index(db_path, spec, device="cpu")["embedded"] == 2
    folder = index_dir(db_path, spec)
    conn = open_index_db(folder)
    rows = conn.execute("SELECT SUM(c_len) FROM entries").fetchone()[0]
    posted = {t for (t,) in conn.execute("SELECT DISTINCT tag_id FROM postings")}
    entries = {t for (t,) in conn.execute("SELECT tag_id FROM entries")}
    conn.close()
    dim = SemanticIndex.open(db_path, spec).embedder.dim
    assert (folder / "colbert.f16").stat().st_size == rows * dim * 2
    assert posted == entries
    clear_cache()
