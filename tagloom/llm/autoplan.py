"""``tagloom categorize --plan auto``: the whole categorization as one plan of four steps.

1. **popular** — the LLM tiers above the last one label the tags they reach (the expensive, careful
   answers, and the ones users type most).
2. **neighbours** — every tag still pending gets the category its nearest labelled tags agree on,
   when they agree enough (:mod:`tagloom.llm.neighbors`; free).
3. **rest** — the last (cheapest) tier labels what the neighbours were unsure of.
4. **re-ask** — neighbour labels below ``reask_below`` confidence go to the last tier too; its
   answer replaces the guess.

The last tier (lowest ``min_posts``) is the *rest* tier. With a single tier there is no popular tier
above it, so step 1 sends it the tags of at least :data:`POPULAR_MIN_POSTS` posts. Tags below the rest
tier's ``min_posts`` are reached only by the neighbour pass: the plan lists them (count, posts and the
first names) and says how to reach them; nothing is dropped without a line saying so.

What steps 2-4 will do depends on answers not given yet, so the dry run estimates them from two
measured rates (:data:`NEIGHBOR_RATE`, :data:`REASK_RATE`), prints them as assumptions, and lets the
caller override them. Every step is resumable: answered tags are in the ledger and never asked again,
and the neighbour pass is deterministic, so a rerun after a kill continues where it stopped.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

from tagloom.llm import jobs
from tagloom.llm.tiers import Tier, cost, estimate
from tagloom.tags.db import TagDB

# Tags of at least this many posts form step 1 when the plan has one tier only.
POPULAR_MIN_POSTS = 1000
# Share of step-2 tags the neighbour pass labels (k=10, share 0.75): measured 48% when only the tags
# of >= 1k posts were labelled neighbours, 54% with labelled neighbours of every frequency (issue 14).
NEIGHBOR_RATE = 0.5
# Share of neighbour labels whose confidence falls below the re-ask threshold (measured 0.2-0.3 at
# 0.9 on the same runs; 0.3 keeps the estimate on the side of paying more).
REASK_RATE = 0.3
REASK_BELOW = 0.9


@dataclass
class AutoPlan:
    """What each step will ask. ``popular`` is exact; the later steps' sizes are estimates."""

    tiers: list[Tier]
    rest: Tier
    popular: list[tuple[Tier, list[str]]]
    later: list[str]  # pending tags for step 2 (every pending tag that step 1 does not ask)
    unreached: list[str]  # the part of ``later`` below the rest tier: neighbours only
    posts: dict[str, int] = field(default_factory=dict)
    neighbor_rate: float = NEIGHBOR_RATE
    reask_rate: float = REASK_RATE
    reask_below: float = REASK_BELOW


def make_plan(
    db: TagDB,
    tiers: list[Tier],
    limit: int | None = None,
    danbooru_categories: tuple[int, ...] | None = (0,),
    neighbor_rate: float = NEIGHBOR_RATE,
    reask_rate: float = REASK_RATE,
    reask_below: float = REASK_BELOW,
) -> AutoPlan:
    task = jobs.CATEGORIZE
    tiers = sorted(tiers, key=lambda t: -t.min_posts)
    rest = tiers[-1]
    upper = tiers[:-1]
    pending = jobs.pending_tags(db, task, danbooru_categories=danbooru_categories, limit=limit)
    posts = _post_counts(db, pending)
    popular: list[tuple[Tier, list[str]]] = []
    asked: set[str] = set()
    if upper:
        for i, t in enumerate(upper):
            hi = upper[i - 1].min_posts if i else None
            tags = [n for n in pending if posts[n] >= t.min_posts and (hi is None or posts[n] < hi)]
            popular.append((t, tags))
            asked.update(tags)
    else:
        tags = [n for n in pending if posts[n] >= max(POPULAR_MIN_POSTS, rest.min_posts)]
        popular.append((rest, tags))
        asked.update(tags)
    later = [n for n in pending if n not in asked]
    unreached = [n for n in later if posts[n] < rest.min_posts]
    return AutoPlan(tiers, rest, popular, later, unreached, posts, neighbor_rate, reask_rate, reask_below)


def _post_counts(db: TagDB, names: list[str]) -> dict[str, int]:
    out = {}
    with db._lock:
        for n in names:
            row = db.conn.execute("SELECT post_count FROM tags WHERE name=?", (n,)).fetchone()
            out[n] = (row[0] or 0) if row else 0
    return out


def estimate_steps(plan: AutoPlan) -> list[dict]:
    """Per step and tier: tags, requests, tokens, cost, and whether the size is exact or estimated."""
    task = jobs.CATEGORIZE
    steps = []
    for tier, tags in plan.popular:
        est = estimate(task, tags, tier.batch_size)
        steps.append({"step": "1 popular", "tier": tier, "exact": True, **est, "cost": cost(est, tier)})
    n_later = len(plan.later)
    reached = n_later - len(plan.unreached)
    labelled = round(n_later * plan.neighbor_rate)
    steps.append({"step": "2 neighbours", "tier": None, "exact": False, "tags": labelled, "requests": 0,
                  "prompt_tokens": 0, "completion_tokens": 0, "cost": 0.0, "of": n_later})
    unsure_reached = round(reached * (1 - plan.neighbor_rate))
    reask = round(reached * plan.neighbor_rate * plan.reask_rate)
    for name, n in (("3 rest", unsure_reached), ("4 re-ask", reask)):
        est = estimate(task, ["x" * 14] * n, plan.rest.batch_size)  # 14 characters: a typical tag name
        steps.append({"step": name, "tier": plan.rest, "exact": False, **est, "cost": cost(est, plan.rest)})
    return steps


def expected_coverage(db: TagDB, plan: AutoPlan, danbooru_categories: tuple[int, ...] | None = (0,)) -> dict:
    """Coverage by count and by post-weighted share now and expected after the plan: every tag an LLM
    tier reaches ends labelled (by neighbours or the LLM); an unreached tag only at the neighbour rate."""
    cond, params = _category_cond(danbooru_categories)
    with db._lock:
        total, total_posts, done, done_posts = db.conn.execute(
            f"""SELECT COUNT(*), COALESCE(SUM(post_count), 0), COUNT(main_category),
                       COALESCE(SUM(CASE WHEN main_category IS NOT NULL THEN post_count ELSE 0 END), 0)
                FROM tags WHERE {cond}""",
            params,
        ).fetchone()
    unreached = set(plan.unreached)
    planned = [n for _, tags in plan.popular for n in tags] + [n for n in plan.later if n not in unreached]
    add = len(planned) + plan.neighbor_rate * len(unreached)
    add_posts = sum(plan.posts[n] for n in planned) + plan.neighbor_rate * sum(plan.posts[n] for n in unreached)
    return {
        "tags": total,
        "now_by_count": done / total if total else 0.0,
        "now_post_weighted": done_posts / total_posts if total_posts else 0.0,
        "expected_by_count": min(1.0, (done + add) / total) if total else 0.0,
        "expected_post_weighted": min(1.0, (done_posts + add_posts) / total_posts) if total_posts else 0.0,
    }


def _category_cond(danbooru_categories: tuple[int, ...] | None) -> tuple[str, list]:
    if danbooru_categories is None:
        return "1=1", []
    return f"category IN ({','.join('?' * len(danbooru_categories))})", list(danbooru_categories)


def dry_run_table(db: TagDB, plan: AutoPlan, danbooru_categories: tuple[int, ...] | None = (0,)) -> str:
    steps = estimate_steps(plan)
    lines = [
        f"task: categorize (prompt {jobs.CATEGORIZE.prompt_version}), plan auto: {len(plan.tiers)} tier(s), "
        f"rest tier {plan.rest.name} ({plan.rest.provider_label()})",
        f"{'step':<13} {'tier':<12} {'tags':>8} {'requests':>8} {'prompt_tok':>11} {'output_tok':>11} {'cost USD':>9}  provider",
    ]
    for s in steps:
        approx = "" if s["exact"] else "~"
        tier = s["tier"]
        who = f"{tier.provider_label()} (batch {tier.batch_size}, x{tier.concurrency})" if tier else \
            f"free: nearest labelled tags, of {s['of']} pending"
        lines.append(
            f"{s['step']:<13} {(tier.name if tier else '-'):<12} {approx + str(s['tags']):>8} {approx + str(s['requests']):>8} "
            f"{approx + str(s['prompt_tokens']):>11} {approx + str(s['completion_tokens']):>11} {s['cost']:>9.4f}  {who}"
        )
    total_cost = sum(s["cost"] for s in steps)
    total_req = sum(s["requests"] for s in steps)
    lines.append(f"{'total':<13} {'':<12} {'':>8} {total_req:>8} {'':>11} {'':>11} {total_cost:>9.4f}")
    cov = expected_coverage(db, plan, danbooru_categories)
    lines.append("")
    lines.append(
        f"coverage of {cov['tags']:,} tags: now {cov['now_by_count']:.1%} by count, {cov['now_post_weighted']:.1%} "
        f"post-weighted; expected after the plan {cov['expected_by_count']:.1%} by count, "
        f"{cov['expected_post_weighted']:.1%} post-weighted"
    )
    lines.append(
        f"assumed (~): the neighbour pass labels {plan.neighbor_rate:.0%} of the tags it sees, and "
        f"{plan.reask_rate:.0%} of its labels fall below {plan.reask_below:.2f} confidence and are re-asked "
        "(--expect-neighbors, --expect-reask)"
    )
    if plan.unreached:
        posts = sum(plan.posts[n] for n in plan.unreached)
        lines.append(
            f"not reached by any tier: {len(plan.unreached):,} tags below {plan.rest.min_posts} posts "
            f"({posts:,} posts); only the neighbour pass labels them, the unsure ones stay uncategorized "
            f"(set the last tier's min_posts to 0 to reach them): "
            + ", ".join(plan.unreached[:10]) + (", ..." if len(plan.unreached) > 10 else "")
        )
    return "\n".join(lines)


def run(
    db: TagDB,
    plan: AutoPlan,
    make_provider: Callable[[Tier], object],
    embed=None,
    min_share: float = 0.75,
    progress: Callable[[int, int], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
    on_step: Callable[[str], None] | None = None,
    danbooru_categories: tuple[int, ...] | None = (0,),
) -> dict:
    """Carry out the plan's four steps; returns a summary with one entry per step."""
    from tagloom.llm.neighbors import neighbor_pass

    task = jobs.CATEGORIZE
    summary: dict = {"task": task.name, "plan": "auto", "tiers": [], "neighbors": 0, "reasked": 0, "unreached": []}

    def ask(step: str, tier: Tier, tags: list[str]) -> None:
        if on_step:
            on_step(f"step {step}: {len(tags)} tags to {tier.provider_label()}")
        if not tags:
            jobs.apply_stored(db, task)  # answers an interrupted run stored are still applied
            summary["tiers"].append({"step": step, "tier": tier.name, "provider": tier.provider_label(),
                                     "asked": 0, "answered": 0, "recovered": 0, "failed": []})
            return
        provider = make_provider(tier)
        try:
            rep = jobs.run_task(db, task, provider, tags, batch_size=tier.batch_size, concurrency=tier.concurrency,
                                progress=progress, should_stop=should_stop)
        finally:
            provider.unload()
        d = rep.as_dict()
        d.update(step=step, tier=tier.name, provider=tier.provider_label())
        summary["tiers"].append(d)

    for tier, tags in plan.popular:
        ask("1 popular", tier, tags)
    # step 2 sees every tag still without a category (steps 1's failures stay pending for a rerun)
    later = [n for n in plan.later if _pending(db, n)]
    if on_step:
        on_step(f"step 2 neighbours: {len(later)} tags")
    assigned, unsure = neighbor_pass(db, later, embed=embed, min_share=min_share) if later else ([], [])
    summary["neighbors"] = len(assigned)
    rest = plan.rest
    reached = [n for n in unsure if plan.posts.get(n, 0) >= rest.min_posts]
    summary["unreached"] = [n for n in unsure if plan.posts.get(n, 0) < rest.min_posts]
    ask("3 rest", rest, reached)
    low = _low_confidence(db, plan.reask_below, rest.min_posts, danbooru_categories)
    summary["reasked"] = len(low)
    ask("4 re-ask", rest, low)
    return summary


def _pending(db: TagDB, name: str) -> bool:
    with db._lock:
        row = db.conn.execute("SELECT main_category FROM tags WHERE name=?", (name,)).fetchone()
    return bool(row) and row[0] is None


def _low_confidence(db: TagDB, below: float, min_posts: int, danbooru_categories) -> list[str]:
    """Neighbour labels under ``below`` confidence that the rest tier reaches and no LLM has answered."""
    from tagloom.tags.llm_ledger import Ledger

    cond, params = _category_cond(danbooru_categories)
    with db._lock:
        rows = db.conn.execute(
            f"""SELECT name FROM tags WHERE {cond} AND category_source = 'neighbors'
                AND category_confidence < ? AND post_count >= ? ORDER BY post_count DESC, name""",
            params + [below, min_posts],
        ).fetchall()
    answered = Ledger(db).answered(jobs.CATEGORIZE.name, jobs.CATEGORIZE.prompt_version)
    return [r[0] for r in rows if r[0] not in answered]
