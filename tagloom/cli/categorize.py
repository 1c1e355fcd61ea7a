"""`tagloom categorize`: put every tag into the pack's categories with an LLM, resumably.

    tagloom categorize [--provider ollama|openai] [--base-url URL] [--model NAME] [--batch-size N]
                       [--concurrency N] [--tiers FILE] [--limit N] [--dry-run] [--first-pass]
    tagloom categorize eval LABELS.csv        # accuracy and per-category F1 of what is stored
    tagloom categorize sample OUT.csv [--n N] # a random sample for human spot checks
    tagloom categorize stats [--tiers FILE]   # coverage by tier

API keys come from the environment (the variable named by --api-key-env or the tier's
``api_key_env``, default OPENAI_API_KEY) or config.toml's [secrets]; there is no option for a key.
"""

from __future__ import annotations

import json
import sys


def add_llm_options(p, default_batch: int | None = None) -> None:
    from tagloom.llm import registry

    p.add_argument("--provider", choices=registry.NAMES,
                   help="LLM server kind (default: config [llm] provider, else ollama); " + registry.help_text())
    p.add_argument("--base-url", help="server URL (default: the provider's usual local URL, above)")
    p.add_argument("--model", help="model name on that server (default: config [llm] model, else the provider's default above)")
    p.add_argument("--api-key-env", help="NAME of the environment variable holding the key (default: OPENAI_API_KEY, "
                   "and only for OpenAI's own endpoint; other servers get no key unless named here)")
    p.add_argument("--timeout", type=float, help="seconds one request may take before it is retried (default: 120)")
    p.add_argument("--batch-size", type=int, default=default_batch, help="tags per request (default 50)")
    p.add_argument("--concurrency", type=int, help="requests in flight (default 1)")
    p.add_argument("--tiers", help="tiers file (TOML/JSON): route tags to providers by post count")
    p.add_argument("--limit", type=int, help="at most N pending tags, most used first")
    p.add_argument("--dry-run", action="store_true", help="print per tier: tags, estimated tokens and cost; ask nothing")
    p.add_argument("--db", help="tag database file (default: the data folder's tags.sqlite)")
    p.add_argument("--all-categories", action="store_true", help="also artist/character/copyright/meta tags (default: general only)")
    p.add_argument("--json", action="store_true", help="print the summary as JSON")


def register(subparsers) -> None:
    p = subparsers.add_parser("categorize", help="categorize tags with an LLM (resumable, batched, tiered)")
    add_llm_options(p)
    p.add_argument("--first-pass", action="store_true",
                   help="first assign categories from the nearest categorized tags (free); send only the unsure ones to the LLM")
    p.add_argument("--min-share", type=float, default=0.75, help="first pass: vote share needed to accept a neighbour category")
    p.set_defaults(handler=handle)
    sub = p.add_subparsers(dest="action", metavar="ACTION")
    e = sub.add_parser("eval", help="score stored categories (or --predictions CSV) against LABELS.csv (tag,main_category)")
    e.add_argument("labels", help="CSV of tag,main_category labels to score against")
    e.add_argument("--predictions", help="CSV tag,main_category to score instead of the database")
    e.add_argument("--db", help="tag database file (default: the configured one)")
    e.add_argument("--json", action="store_true", help="print the scores as JSON")
    e.set_defaults(handler=handle_eval)
    s = sub.add_parser("sample", help="export a random sample of categorized tags for human spot checks")
    s.add_argument("out", help="CSV file to write")
    s.add_argument("--n", type=int, default=100, help="tags in the sample")
    s.add_argument("--seed", type=int, default=0, help="random seed of the sample")
    s.add_argument("--source", help="only tags whose category source starts with this (llm, neighbors, human)")
    s.add_argument("--db", help="tag database file (default: the configured one)")
    s.set_defaults(handler=handle_sample)
    st = sub.add_parser("stats", help="categorization coverage by tier")
    st.add_argument("--tiers", help="tiers file (TOML/JSON) whose frequency tiers the table uses (default: the built-in tiers)")
    st.add_argument("--db", help="tag database file (default: the configured one)")
    st.set_defaults(handler=handle_stats)


def tiers_from_args(args):
    from tagloom.llm.pipeline import single_tier
    from tagloom.llm.tiers import load_tiers

    if getattr(args, "tiers", None):
        tiers = load_tiers(args.tiers)
        for t in tiers:  # explicit flags override every tier
            if args.batch_size:
                t.batch_size = args.batch_size
            if args.concurrency:
                t.concurrency = args.concurrency
            if getattr(args, "timeout", None):
                t.timeout = args.timeout
        return tiers
    return [single_tier(args.provider, args.model, args.base_url, args.batch_size, args.concurrency, args.api_key_env,
                        timeout=getattr(args, "timeout", None))]


def run_task_cli(args, task_name: str) -> int:
    from tagloom.errors import TagLoomError
    from tagloom.llm import jobs, pipeline
    from tagloom.tags.db import TagDB

    task = jobs.TASKS[task_name]
    tiers = tiers_from_args(args)
    with TagDB(args.db) as db:
        cats = None if args.all_categories else (0,)
        planned = pipeline.plan(db, task, tiers, limit=args.limit, danbooru_categories=cats)
        if args.dry_run:
            print(pipeline.dry_run_table(planned, task))
            return 0
        for t in tiers:
            if not t.model and any(tags for tier, tags in planned if tier is t):
                raise TagLoomError(f"tier {t.name}: no model given (--model, the tiers file, or config.toml [llm] model)")
        total = sum(len(tags) for _, tags in planned)
        last = [0]

        def progress(done, n):
            if sys.stderr.isatty() or done - last[0] >= 50 or done == n:
                last[0] = done
                print(f"\r{task.name}: {done}/{n}", end="", file=sys.stderr, flush=True)

        print(f"{task.name}: {total} tags pending", file=sys.stderr)
        summary = pipeline.run(
            db, task, planned, first_pass=getattr(args, "first_pass", False), min_share=getattr(args, "min_share", 0.75),
            progress=progress,
        )
        print(file=sys.stderr)
    if args.json:
        print(json.dumps(summary, ensure_ascii=False))
    else:
        if summary.get("neighbors"):
            print(f"first pass: {summary['neighbors']} tags from their nearest categorized tags")
        for t in summary["tiers"]:
            u = t.get("usage", {})
            print(
                f"tier {t['tier']}: asked {t['asked']}, answered {t['answered']}, recovered {t.get('recovered', 0)}, "
                f"failed {len(t['failed'])}, requests {u.get('requests', 0)}, tokens {u.get('prompt_tokens', 0)}+{u.get('completion_tokens', 0)}"
            )
            if t["failed"]:
                print("  still pending (run again): " + ", ".join(t["failed"][:20]))
    return 1 if any(t["failed"] for t in summary["tiers"]) else 0


def handle(args) -> int:
    return run_task_cli(args, "categorize")


def handle_eval(args) -> int:
    from tagloom.llm import evaluate
    from tagloom.tags.db import TagDB

    labels = evaluate.read_labels(args.labels)
    if args.predictions:
        preds = evaluate.read_labels(args.predictions)
    else:
        with TagDB(args.db) as db:
            preds = evaluate.predictions_from_db(db, labels)
    result = evaluate.score(labels, preds)
    print(json.dumps(result, indent=1) if args.json else evaluate.format_report(result))
    return 0


def handle_sample(args) -> int:
    from tagloom.llm import evaluate
    from tagloom.tags.db import TagDB

    with TagDB(args.db) as db:
        n = evaluate.export_sample(db, args.out, n=args.n, seed=args.seed, source=args.source)
    print(f"wrote {n} tags to {args.out}")
    return 0


def handle_stats(args) -> int:
    from tagloom.llm.pipeline import coverage_by_tier
    from tagloom.llm.tiers import Tier, load_tiers
    from tagloom.tags.db import TagDB

    tiers = load_tiers(args.tiers) if args.tiers else [Tier("all", "ollama", "-", 0)]
    with TagDB(args.db) as db:
        rows = coverage_by_tier(db, tiers)
    print(f"{'tier':<12} {'min_posts':>9} {'tags':>8} {'categorized':>11} {'neighbors':>9} {'coverage':>8}")
    for r in rows:
        cov = r["categorized"] / r["tags"] if r["tags"] else 0.0
        print(f"{r['tier']:<12} {r['min_posts']:>9} {r['tags']:>8} {r['categorized']:>11} {r['neighbors']:>9} {cov:>8.1%}")
    return 0
