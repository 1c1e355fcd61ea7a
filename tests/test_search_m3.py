"""The BGE-M3 path (dense + sparse lexical weights + ColBERT) with a tiny M3 built here from configs
(tests/tiny_m3.py: a Unigram tokenizer trained on the test corpus and a 2-layer XLM-R with random
weights): real transformers, real chromadb, our SQLite sparse index and the float16 ColBERT memmap.
Random weights prove the plumbing and the maths, not retrieval quality."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")
pytest.importorskip("chromadb")

from tagloom.errors import TagLoomError  # noqa: E402
from tagloom.search import suggest  # noqa: E402
from tagloom.search.build import build_index  # noqa: E402
from tagloom.search.embedders import M3Embedder, get_embedder  # noqa: E402
from tagloom.search.engine import clear_cache  # noqa: E402
from tagloom.search.semantic import SemanticIndex, index_dir, open_index_db  # noqa: E402
from tagloom.search.text import entry_text  # noqa: E402
from tagloom.tags import TagDB  # noqa: E402
from tiny_m3 import make_tiny_m3  # noqa: E402

TAGS = [
    ("1girl", 0, 6008644, [], None),
    ("long_hair", 0, 4350743, ["longhair"], None),
    ("twintails", 0, 904712, ["twin_tails"], "双马尾"),
    ("school_uniform", 0, 1000000, ["seifuku"], None),
    ("fox_girl", 0, 75939, [], None),
    ("hatsune_miku", 4, 150000, ["miku"], None),
    ("sunset", 0, 120000, [], None),
    ("wlop", 1, 900, [], None),
]


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    clear_cache()
    root = tmp_path_factory.mktemp("m3")
    db_path = root / "tags.sqlite"
    with TagDB(db_path) as db:
        db.upsert_tags({"name": n, "category": c, "post_count": p} for n, c, p, _, _ in TAGS)
        db.add_aliases((a, n) for n, _, _, al, _ in TAGS for a in al)
        db.add_translations((n, "zh", z) for n, _, _, _, z in TAGS if z)
        texts = [entry_text(t) for t in db.iter_tags()]
    model = make_tiny_m3(root / "tiny-bge-m3", texts)
    spec = f"m3:{model}"
    result = build_index(db_path, spec, batch_size=3, device="cpu")
    yield db_path, model, spec, result, texts
    clear_cache()


def test_encode_matches_the_flagembedding_recipe(setup):
    _, model_dir, spec, _, texts = setup
    emb = get_embedder(spec, device="cpu")
    out = emb.encode(texts[:3], batch_size=2)
    # Recompute by hand, one text at a time (no padding), as FlagEmbedding's BGEM3 model does.
    for i, text in enumerate(texts[:3]):
        b = emb.tokenizer([text], return_tensors="pt")
        with torch.inference_mode():
            h = emb.model(**b).last_hidden_state
            dense = torch.nn.functional.normalize(h[:, 0], dim=-1)[0].numpy()
            w = torch.relu(emb.sparse_linear(h)).squeeze(-1)[0].numpy()
            col = torch.nn.functional.normalize(emb.colbert_linear(h[:, 1:]), dim=-1)[0].numpy()
        np.testing.assert_allclose(out.dense[i], dense, atol=1e-5)
        expect: dict[int, float] = {}
        for tok, wt in zip(b["input_ids"][0].tolist(), w):
            if tok not in (0, 1, 2, 3) and wt > 0:
                expect[tok] = max(expect.get(tok, 0.0), float(wt))
        assert out.sparse[i].keys() == expect.keys()
        assert all(abs(out.sparse[i][k] - v) < 1e-4 for k, v in expect.items())
        np.testing.assert_allclose(out.colbert[i].astype(np.float32), col, atol=2e-3)  # stored as float16


def test_build_fills_dense_sparse_and_colbert_stores(setup):
    db_path, _, spec, result, _ = setup
    assert result["count"] == len(TAGS) and result["embedded"] == len(TAGS)
    folder = index_dir(db_path, spec)
    conn = open_index_db(folder)
    n_postings = conn.execute("SELECT COUNT(*) FROM postings").fetchone()[0]
    total_rows = conn.execute("SELECT SUM(c_len) FROM entries").fetchone()[0]
    conn.close()
    assert n_postings > len(TAGS)
    dim = get_embedder(spec, device="cpu").dim
    assert (folder / "colbert.f16").stat().st_size == total_rows * dim * 2
    assert SemanticIndex.open(db_path, spec).collection.count() == len(TAGS)


def test_all_three_channels_rank(setup):
    db_path, _, spec, _, texts = setup
    idx = SemanticIndex.open(db_path, spec)
    names = {t[0] for t in TAGS}
    with TagDB(db_path) as db:
        id_of = {t["name"]: t["id"] for t in db.iter_tags()}
    # The exact entry text of a tag: dense cosine 1 and ColBERT MaxSim 1 put it first.
    twin_text = next(t for t in texts if "twintails" in t)
    found = idx.search(twin_text, k=len(TAGS))
    assert set(found) == {"dense", "dense_sim", "head", "head_sim", "sparse", "colbert"}
    assert found["dense"][0] == id_of["twintails"] and found["colbert"][0] == id_of["twintails"]
    # Lexical: only twintails' entry has the tokens of 双马尾.
    assert idx.search("双马尾", k=len(TAGS))["sparse"][0] == id_of["twintails"]
    assert names  # (the fused ranking is checked through suggest below)


def test_suggest_with_m3(setup):
    db_path, _, spec, _, _ = setup
    # Not a prefix of the translation (that would be a literal "translation" hit): semantic only.
    r = suggest("双马尾 头发", limit=len(TAGS), semantic=True, db_path=db_path, embedder=spec)
    # Random weights: dense and ColBERT ranks are noise; the lexical channel still lifts twintails.
    print([(x["tag"], x["score"]) for x in r])
    assert [x["tag"] for x in r].index("twintails") < 3 and all(x["reason"] == "semantic" for x in r)
    r = suggest("long h", limit=3, semantic=True, db_path=db_path, embedder=spec)
    assert r[0]["tag"] == "long_hair" and r[0]["reason"] == "prefix"


def test_incremental_update_appends_colbert_rows(setup):
    db_path, _, spec, _, _ = setup
    with TagDB(db_path) as db:
        db.set_description("sunset", "The sun going down.")
    r = build_index(db_path, spec, batch_size=3, device="cpu")
    assert (r["embedded"], r["unchanged"]) == (1, len(TAGS) - 1)
    idx = SemanticIndex.open(db_path, spec)
    with TagDB(db_path) as db:
        sunset = db.get("sunset")
    found = idx.search(entry_text(sunset), k=len(TAGS))
    assert found["colbert"][0] == sunset["id"]  # the new vectors, not the stale ones


def test_missing_heads_are_refused(tmp_path, setup):
    _, model_dir, _, _, _ = setup
    import shutil

    broken = tmp_path / "broken"
    shutil.copytree(model_dir, broken)
    (broken / "sparse_linear.pt").unlink()
    with pytest.raises(TagLoomError, match="sparse_linear.pt is missing"):
        M3Embedder("m3:" + str(broken), broken, device="cpu")


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA: the fp16 GPU path of the index build")
def test_fp16_on_gpu_matches_cpu(setup):
    _, model_dir, _, _, texts = setup
    cpu = M3Embedder("m3:cpu", model_dir, device="cpu")
    gpu = M3Embedder("m3:gpu", model_dir, device="cuda")
    assert gpu.fp16
    a, b = cpu.encode(texts), gpu.encode(texts)
    assert np.min(np.sum(a.dense * b.dense, axis=1)) > 0.99


def test_build_without_colbert(tmp_path, setup):
    db_path, _, spec, _, _ = setup
    import shutil

    from tagloom.cli import main

    other = tmp_path / "copy.sqlite"
    shutil.copy(db_path, other)
    assert main(["index", "build", "--db", str(other), "--embedder", spec, "--device", "cpu", "--no-colbert", "-q"]) == 0
    folder = index_dir(other, spec)
    assert not (folder / "colbert.f16").exists()
    found = SemanticIndex.open(other, spec).search("双马尾", k=5)
    assert set(found) == {"dense", "dense_sim", "head", "head_sim", "sparse"}
    r = build_index(other, spec, device="cpu")  # ColBERT back on: everything is embedded again
    assert r["embedded"] == len(TAGS) and (folder / "colbert.f16").stat().st_size > 0


def test_quality_benchmark_runs_on_an_m3_index(setup):
    """bench/autocomplete_quality.py's three paths run with BGE-M3 (here the tiny model: the figures
    mean nothing, the path does): its channels go through the same ranking, without a calibrated
    threshold (none for this embedder), so meaning rows beside literal ones keep to the discovery slots."""
    import sys

    from tests_paths import REPO

    sys.path.insert(0, str(REPO / "bench"))
    import autocomplete_quality as aq

    from tagloom.search import ranking
    from tagloom.search.engine import get_engine

    db_path, _, spec, _, _ = setup
    clear_cache()
    index = get_engine(db_path).semantic_index(spec)
    assert ranking.threshold_for(index.embedder.slug) is None
    Q = aq.Query
    qs = [Q("prefix", "long_h", ("long_hair",)), Q("alias", "seifu", ("school_uniform",)),
          Q("zh", "双马尾", ("twintails",))]
    report = aq.evaluate(qs, {"classic": aq.classic_run(db_path), "semantic": aq.semantic_run(db_path, index),
                              "fused": aq.fused_run(db_path, spec)})
    assert set(report["paths"]) == {"classic", "semantic", "fused"}
    assert report["paths"]["fused"]["overall"]["recall"] == 1.0 and report["lost_in_fused"]["overall"] == 0
    rows = suggest("long_h", limit=8, db_path=db_path, embedder=spec)
    assert rows[0]["tag"] == "long_hair" and sum(r["reason"] == "semantic" for r in rows) <= ranking.SEMANTIC_SLOTS
    clear_cache()
