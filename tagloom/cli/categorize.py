"""`tagloom categorize`: put every tag into the pack's categories with an LLM, resumably.

    tagloom categorize [--provider ollama|openai] [--base-url URL] [--model NAME] [--batch-size N]
                       [--concurrency N] [--tiers FILE] [--limit N] [--dry-run] [--first-pass]
    tagloom categorize eval LABELS.csv        # accuracy and per-category F1 of what is stored
    tagloom categorize sample OUT.csv [--n N] # a random sample for human spot checks
    tagloom categorize --plan auto [--dry-run]  # popular tiers, neighbours, the rest, re-ask the unsure
    tagloom categorize stats [--tiers FILE] [--html FILE] [--json]  # coverage by tier, category, source

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
    p.add_argument("--plan", choices=["tiers", "auto"], default="tiers",
                   help="tiers: each tier asks the tags in its post-count range; auto: the upper tiers ask the popular "
                        "tags, the neighbour pass labels what it is sure of, the last tier asks the rest and re-asks "
                        "unsure neighbour labels (docs/llm.md)")
    p.add_argument("--reask-below", type=float, default=0.9,
                   help="--plan auto: neighbour labels under this confidence are asked again")
    p.add_argument("--expect-neighbors", type=float, default=0.5,
                   help="--plan auto --dry-run: assumed share of tags the neighbour pass labels")
    p.add_argument("--expect-reask", type=float, default=0.3,
                   help="--plan auto --dry-run: assumed share of neighbour labels below --reask-below")
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
    st = sub.add_parser("stats", help="categorization coverage by tier, category and label source")
    st.add_argument("--tiers", help="tiers file (TOML/JSON) whose frequency tiers the table uses "
                    "(default: decades of posts, >=100k ... <100)")
    st.add_argument("--db", help="tag database file (default: the configured one)")
    st.add_argument("--html", metavar="FILE", help="also write the report as one self-contained HTML page with bars")
    st.add_argument("--all-categories", action="store_true", help="count artist/character/copyright/meta tags too (default: general only)")
    st.add_argument("--json", action="store_true", help="print the figures as JSON")
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
    if task_name == "categorize" and getattr(args, "plan", "tiers") == "auto":
        return run_auto_cli(args, tiers)
    with TagDB(args.db) as db:
        cats = None if args.all_categories else (0,)
        before = _coverage_total(db, cats) if task_name == "categorize" else None
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
        if before is not None:
            summary["coverage"] = _record_coverage(db, cats, before)
        summary["unreached"] = len(getattr(planned, "unreached", []))
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
        if summary.get("coverage"):
            print(summary["coverage"]["line"])
        if pipeline.unreached_line(planned):
            print(pipeline.unreached_line(planned))
    return 1 if any(t["failed"] for t in summary["tiers"]) else 0


def _coverage_total(db, cats) -> dict:
    from tagloom.llm import coverage

    return coverage.compute(db, danbooru_categories=cats)["total"]


def _record_coverage(db, cats, before: dict) -> dict:
    """Store the coverage before and after this run (``categorize stats`` shows it) and describe it."""
    from tagloom.llm import coverage

    after = _coverage_total(db, cats)
    coverage.save_last_run(db, {"total": before}, {"total": after})
    return {"before": before, "after": after, "line": coverage.change_line(before, after)}


def run_auto_cli(args, tiers) -> int:
    """``--plan auto``: see tagloom/llm/autoplan.py."""
    from tagloom.errors import TagLoomError
    from tagloom.llm import autoplan
    from tagloom.llm.providers import make_provider
    from tagloom.tags.db import TagDB

    cats = None if args.all_categories else (0,)
    with TagDB(args.db) as db:
        plan = autoplan.make_plan(db, tiers, limit=args.limit, danbooru_categories=cats,
                                  neighbor_rate=args.expect_neighbors, reask_rate=args.expect_reask,
                                  reask_below=args.reask_below)
        if args.dry_run:
            print(autoplan.dry_run_table(db, plan, cats))
            return 0
        for t in plan.tiers:
            if not t.model:
                raise TagLoomError(f"tier {t.name}: no model given (--model, the tiers file, or config.toml [llm] model)")
        before = _coverage_total(db, cats)
        last = [0]

        def progress(done, n):
            if sys.stderr.isatty() or done - last[0] >= 50 or done == n:
                last[0] = done
                print(f"\r  {done}/{n}", end="", file=sys.stderr, flush=True)

        def on_step(line):
            print(("\n" if last[0] else "") + line, file=sys.stderr, flush=True)
            last[0] = 0

        def provider_for(tier):
            return make_provider(tier.provider, tier.model, base_url=tier.base_url, api_key_env=tier.api_key_env,
                                 timeout=tier.timeout, num_ctx=tier.num_ctx)

        summary = autoplan.run(db, plan, provider_for, min_share=args.min_share, progress=progress,
                               on_step=on_step, danbooru_categories=cats)
        print(file=sys.stderr)
        summary["coverage"] = _record_coverage(db, cats, before)
    if args.json:
        print(json.dumps(summary, ensure_ascii=False))
    else:
        for t in summary["tiers"]:
            u = t.get("usage", {})
            print(f"step {t['step']}: tier {t['tier']} ({t['provider']}): asked {t['asked']}, answered {t['answered']}, "
                  f"failed {len(t['failed'])}, requests {u.get('requests', 0)}, "
                  f"tokens {u.get('prompt_tokens', 0)}+{u.get('completion_tokens', 0)}")
            if t["failed"]:
                print("  still pending (run again): " + ", ".join(t["failed"][:20]))
        print(f"step 2 neighbours: {summary['neighbors']} tags labelled from their nearest labelled tags; "
              f"step 4 re-asked {summary['reasked']} unsure ones")
        if summary["unreached"]:
            print(f"left uncategorized: {len(summary['unreached'])} tags below the last tier that the neighbours "
                  "were unsure of: " + ", ".join(summary["unreached"][:10]) + (", ..." if len(summary["unreached"]) > 10 else ""))
        print(summary["coverage"]["line"])
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
    result["confusion"] = evaluate.confusion(labels, preds)
    if args.json:
        print(json.dumps(result, indent=1))
    else:
        print(evaluate.format_report(result) + "\n\n" + evaluate.format_confusion(result["confusion"]))
    return 0


def handle_sample(args) -> int:
    from tagloom.llm import evaluate
    from tagloom.tags.db import TagDB

    with TagDB(args.db) as db:
        n = evaluate.export_sample(db, args.out, n=args.n, seed=args.seed, source=args.source)
    print(f"wrote {n} tags to {args.out}")
    return 0


def handle_stats(args) -> int:
    from pathlib import Path

    from tagloom.llm import coverage
    from tagloom.llm.tiers import load_tiers
    from tagloom.tags.db import TagDB

    ranges = coverage.ranges_from_tiers(load_tiers(args.tiers)) if args.tiers else None
    cats = None if args.all_categories else (0,)
    with TagDB(args.db) as db:
        cov = coverage.compute(db, ranges, danbooru_categories=cats)
        last = coverage.last_run(db)
    if args.html:  # first: the page is what was asked for, whatever happens to standard output
        Path(args.html).write_text(coverage.format_html(cov, last), encoding="utf-8")
        print(f"wrote {args.html}", file=sys.stderr)
    if args.json:
        print(json.dumps({**cov, "last_run": last}, ensure_ascii=False, indent=1))
    else:
        print(coverage.format_text(cov, last))
    return 0
