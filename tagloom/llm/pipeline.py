"""Whole jobs as the CLI and the nodes run them: plan by tier, optional first pass, run, summarize."""

from __future__ import annotations

import logging
from typing import Callable

from tagloom import config
from tagloom.llm import jobs
from tagloom.llm.providers import RetryPolicy, make_provider
from tagloom.llm.tiers import Tier, cost, estimate, split_by_tier
from tagloom.tags.db import TagDB

log = logging.getLogger(__name__)


def single_tier(
    provider: str | None = None,
    model: str | None = None,
    base_url: str | None = None,
    batch_size: int | None = None,
    concurrency: int | None = None,
    api_key_env: str | None = None,
    timeout: float | None = None,
) -> Tier:
    """A one-tier plan from explicit options, completed from config.toml's ``[llm]`` table."""
    from tagloom.llm.registry import get

    conf = config.section("llm")
    kind = provider or conf.get("provider", "ollama")
    return Tier(
        name="all",
        provider=kind,
        # no model named anywhere: the provider's documented default (docs/llm.md)
        model=model or conf.get("model") or get(kind).default_model,
        base_url=base_url or conf.get("base_url"),
        api_key_env=api_key_env or conf.get("api_key_env"),
        batch_size=batch_size or int(conf.get("batch_size", 50)),
        concurrency=concurrency or int(conf.get("concurrency", 1)),
        price_in=float(conf.get("price_in", 0.0)),
        price_out=float(conf.get("price_out", 0.0)),
        timeout=float(timeout or conf.get("timeout", 120.0)),
    )


def plan(db: TagDB, task: jobs.Task, tiers: list[Tier], limit: int | None = None,
         danbooru_categories: tuple[int, ...] | None = (0,)) -> list[tuple[Tier, list[str]]]:
    tags = jobs.pending_tags(db, task, danbooru_categories=danbooru_categories, limit=limit)
    posts = {}
    with db._lock:
        for name in tags:
            row = db.conn.execute("SELECT post_count FROM tags WHERE name=?", (name,)).fetchone()
            posts[name] = row[0] if row else 0
    split = split_by_tier(tiers, [(t, posts[t]) for t in tags])
    planned = Planned((t, split[t.name]) for t in tiers)
    reached = {n for names in split.values() for n in names}
    planned.unreached = [n for n in tags if n not in reached]
    planned.unreached_posts = sum(posts[n] or 0 for n in planned.unreached)
    return planned


class Planned(list):
    """[(tier, tags)], plus the pending tags below every tier's ``min_posts`` (``unreached``): no
    tier asks them, and the dry run and the run say so instead of dropping them silently."""

    unreached: list[str] = []
    unreached_posts: int = 0


def unreached_line(planned) -> str | None:
    left = getattr(planned, "unreached", [])
    if not left:
        return None
    lowest = min((t.min_posts for t, _ in planned), default=0)
    return (f"not reached by any tier: {len(left):,} pending tags below {lowest} posts ({planned.unreached_posts:,} posts), "
            "e.g. " + ", ".join(left[:10]) + (", ..." if len(left) > 10 else "")
            + "; set the last tier's min_posts to 0, or use --plan auto (its neighbour pass labels what it is sure of)")


def dry_run_table(planned: list[tuple[Tier, list[str]]], task: jobs.Task) -> str:
    """Per tier: tags, requests, estimated tokens, and the estimated cost of that tier with each
    provider named in the plan (so a user sees what moving a tier to another provider would cost)."""
    providers = []
    for tier, _ in planned:
        if tier.provider_label() not in [p.provider_label() for p in providers]:
            providers.append(tier)
    head = f"{'tier':<12} {'min_posts':>9} {'tags':>8} {'requests':>8} {'prompt_tok':>11} {'output_tok':>11}  assigned provider"
    lines = [f"task: {task.name} (prompt {task.prompt_version})", head]
    total = {"tags": 0, "requests": 0, "prompt_tokens": 0, "completion_tokens": 0}
    costs = []
    for tier, tags in planned:
        est = estimate(task, tags, tier.batch_size)
        for k in total:
            total[k] += est[k]
        lines.append(
            f"{tier.name:<12} {tier.min_posts:>9} {est['tags']:>8} {est['requests']:>8} {est['prompt_tokens']:>11} "
            f"{est['completion_tokens']:>11}  {tier.provider_label()} (batch {tier.batch_size}, x{tier.concurrency})"
        )
        costs.append((tier, est))
    lines.append(f"{'total':<12} {'':>9} {total['tags']:>8} {total['requests']:>8} {total['prompt_tokens']:>11} {total['completion_tokens']:>11}")
    lines.append("")
    lines.append("estimated cost (USD) per tier if sent to each provider (prices from the tiers file):")
    lines.append(f"{'tier':<12} " + " ".join(f"{p.provider_label():>24}" for p in providers))
    for tier, est in costs:
        lines.append(f"{tier.name:<12} " + " ".join(f"{cost(est, p):>24.4f}" for p in providers))
    planned_cost = sum(cost(est, tier) for tier, est in costs)
    lines.append(f"planned total (each tier on its own provider): ${planned_cost:.4f}")
    if unreached_line(planned):
        lines.append(unreached_line(planned))
    return "\n".join(lines)


def run(
    db: TagDB,
    task: jobs.Task,
    planned: list[tuple[Tier, list[str]]],
    first_pass: bool = False,
    embed=None,
    min_share: float = 0.75,
    progress: Callable[[int, int], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
    retry: RetryPolicy | None = None,
    unload: bool = True,
) -> dict:
    summary: dict = {"task": task.name, "tiers": [], "neighbors": 0}
    if task.name == "categorize" and first_pass:
        from tagloom.llm.neighbors import neighbor_pass

        all_tags = [t for _, tags in planned for t in tags]
        assigned, unsure = neighbor_pass(db, all_tags, embed=embed, min_share=min_share)
        summary["neighbors"] = len(assigned)
        keep = set(unsure)
        planned = [(tier, [t for t in tags if t in keep]) for tier, tags in planned]
    for tier, tags in planned:
        if not tags:
            # still apply answers an interrupted run stored
            jobs.apply_stored(db, task)
            summary["tiers"].append({"tier": tier.name, "asked": 0, "answered": 0, "failed": []})
            continue
        provider = make_provider(
            tier.provider, tier.model, base_url=tier.base_url, api_key_env=tier.api_key_env,
            timeout=tier.timeout, retry=retry, num_ctx=tier.num_ctx,
        )
        try:
            rep = jobs.run_task(
                db, task, provider, tags, batch_size=tier.batch_size, concurrency=tier.concurrency,
                progress=progress, should_stop=should_stop,
            )
        finally:
            if unload:
                provider.unload()
        d = rep.as_dict()
        d["tier"] = tier.name
        d["provider"] = tier.provider_label()
        summary["tiers"].append(d)
    return summary

