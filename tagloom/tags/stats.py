"""``tagloom tags stats``: what the database holds, by Danbooru category and frequency tier, and how
much of it the pack's own categories (``main_category``, set by the LLM categorizer) cover — by tag
count and weighted by post count, since the popular tags are the ones users type."""

from __future__ import annotations

from tagloom.tags.db import DANBOORU_CATEGORIES, TagDB

# (label, low inclusive, high exclusive)
TIERS = [
    (">1M", 1_000_000, None),
    ("100k-1M", 100_000, 1_000_000),
    ("10k-100k", 10_000, 100_000),
    ("1k-10k", 1_000, 10_000),
    ("100-1k", 100, 1_000),
    ("<100", None, 100),
]


def tier_of(post_count: int) -> str:
    for label, lo, hi in TIERS:
        if (lo is None or post_count >= lo) and (hi is None or post_count < hi):
            return label
    return "<100"


def compute(db: TagDB) -> dict:
    c = db.conn
    out: dict = {"tags": db.count()}
    out["aliases"] = c.execute("SELECT COUNT(*) FROM aliases").fetchone()[0]
    out["translations"] = dict(c.execute("SELECT lang, COUNT(*) FROM translations GROUP BY lang").fetchall())
    out["with_description"] = c.execute("SELECT COUNT(*) FROM tags WHERE description IS NOT NULL AND description != ''").fetchone()[0]
    out["by_category"] = {
        DANBOORU_CATEGORIES.get(cat, "unknown" if cat is None else str(cat)): {"tags": n, "posts": p or 0}
        for cat, n, p in c.execute("SELECT category, COUNT(*), SUM(post_count) FROM tags GROUP BY category ORDER BY category")
    }
    tiers = {label: {"tags": 0, "posts": 0, "categorized": 0, "categorized_posts": 0} for label, _, _ in TIERS}
    for pc, n, posts, cat_n, cat_posts in c.execute(
        """SELECT CASE WHEN post_count >= 1000000 THEN 0 WHEN post_count >= 100000 THEN 1
                       WHEN post_count >= 10000 THEN 2 WHEN post_count >= 1000 THEN 3
                       WHEN post_count >= 100 THEN 4 ELSE 5 END AS t,
                  COUNT(*), SUM(post_count),
                  SUM(main_category IS NOT NULL), SUM(CASE WHEN main_category IS NOT NULL THEN post_count ELSE 0 END)
           FROM tags GROUP BY t"""
    ):
        d = tiers[TIERS[pc][0]]
        d.update(tags=n, posts=posts or 0, categorized=cat_n or 0, categorized_posts=cat_posts or 0)
    for d in tiers.values():
        d["coverage"] = d["categorized"] / d["tags"] if d["tags"] else 0.0
        d["post_weighted_coverage"] = d["categorized_posts"] / d["posts"] if d["posts"] else 0.0
    out["by_tier"] = tiers
    total_posts = sum(d["posts"] for d in tiers.values())
    cat_posts = sum(d["categorized_posts"] for d in tiers.values())
    cat_n = sum(d["categorized"] for d in tiers.values())
    out["coverage"] = {
        "categorized": cat_n,
        "by_count": cat_n / out["tags"] if out["tags"] else 0.0,
        "post_weighted": cat_posts / total_posts if total_posts else 0.0,
    }
    out["by_main_category"] = {
        m: {"tags": n, "posts": p or 0}
        for m, n, p in c.execute(
            "SELECT main_category, COUNT(*), SUM(post_count) FROM tags WHERE main_category IS NOT NULL GROUP BY main_category ORDER BY 2 DESC"
        )
    }
    out["category_sources"] = dict(
        c.execute("SELECT category_source, COUNT(*) FROM tags WHERE category_source IS NOT NULL GROUP BY category_source")
    )
    return out


def format_table(s: dict) -> str:
    lines = [f"tags: {s['tags']:,}   aliases: {s['aliases']:,}   translations: "
             + (", ".join(f"{k} {v:,}" for k, v in s["translations"].items()) or "0")
             + f"   with description: {s['with_description']:,}", ""]
    lines.append(f"{'category':<12}{'tags':>10}{'posts':>16}")
    for cat, d in s["by_category"].items():
        lines.append(f"{cat:<12}{d['tags']:>10,}{d['posts']:>16,}")
    lines.append("")
    lines.append(f"{'tier':<10}{'tags':>10}{'posts':>16}{'categorized':>13}{'by count':>10}{'by posts':>10}")
    for label, d in s["by_tier"].items():
        lines.append(
            f"{label:<10}{d['tags']:>10,}{d['posts']:>16,}{d['categorized']:>13,}"
            f"{d['coverage']:>10.1%}{d['post_weighted_coverage']:>10.1%}"
        )
    cov = s["coverage"]
    lines.append(f"{'all':<10}{s['tags']:>10,}{'':>16}{cov['categorized']:>13,}{cov['by_count']:>10.1%}{cov['post_weighted']:>10.1%}")
    if s["by_main_category"]:
        lines.append("")
        lines.append(f"{'main_category':<20}{'tags':>10}{'posts':>16}")
        for m, d in s["by_main_category"].items():
            lines.append(f"{m:<20}{d['tags']:>10,}{d['posts']:>16,}")
    return "\n".join(lines)
