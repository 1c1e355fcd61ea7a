"""Storing vectors into chromadb: tags/s for HNSW collection settings (the store half of an index build).

    .venv/bin/python bench/chroma_store.py                    # 20,000 random unit 1024-d vectors (BGE-M3's width)
    .venv/bin/python bench/chroma_store.py --n 50000 --dim 1024 --chunk 5000

Upserts N random unit vectors in chunks into a fresh embedded chromadb per configuration, then asks
50 near-duplicate queries (recall@1: did the graph keep its quality). Prints one table.
"""

from __future__ import annotations

import argparse
import tempfile
import time

import numpy as np


CONFIGS = {  # what tagloom.search.semantic creates, then variations to try on a given host
    "defaults (what TagLoom uses)": {"hnsw:space": "cosine"},
    "batch 5,000 + sync 20,000": {"hnsw:space": "cosine", "hnsw:batch_size": 5000, "hnsw:sync_threshold": 20000},
    "construction_ef 64": {"hnsw:space": "cosine", "hnsw:construction_ef": 64},
}


def run(meta: dict, vectors: np.ndarray, chunk: int) -> tuple[float, float]:
    import chromadb

    client = chromadb.PersistentClient(path=tempfile.mkdtemp(prefix="tagloom-bench-chroma-"))
    col = client.get_or_create_collection("tags", embedding_function=None, metadata=meta)
    ids = [f"t{i}" for i in range(len(vectors))]
    t0 = time.perf_counter()
    for i in range(0, len(vectors), chunk):
        col.upsert(ids=ids[i : i + chunk], embeddings=vectors[i : i + chunk])
    rate = len(vectors) / (time.perf_counter() - t0)
    hits = col.query(query_embeddings=vectors[:50] + 0.01, n_results=1)["ids"]
    return rate, float(np.mean([hits[k][0] == ids[k] for k in range(50)]))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=20000)
    ap.add_argument("--dim", type=int, default=1024)
    ap.add_argument("--chunk", type=int, default=5000, help="vectors per upsert (the index build's chunk)")
    args = ap.parse_args(argv)
    rng = np.random.default_rng(0)
    vectors = rng.standard_normal((args.n, args.dim)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    run({"hnsw:space": "cosine"}, vectors[:2000], args.chunk)  # warm-up: imports, the Rust bindings, the disk
    print("| configuration | metadata | tags/s | recall@1 |")
    print("| --- | --- | ---: | ---: |")
    for name, meta in CONFIGS.items():
        rate, recall = run(meta, vectors, args.chunk)
        print(f"| {name} | {meta} | {rate:.0f} | {recall:.2f} |", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
