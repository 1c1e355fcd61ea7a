"""How much of the tag list has a pack category, and where each label came from.

``tagloom categorize stats`` prints it; ``--html FILE`` draws the same figures as bars in one
self-contained HTML page (no scripts, no network). Coverage is counted two ways: by tag count, and
weighted by post count, since the popular tags are the ones users type. Rows: frequency tiers (the
tiers file's ranges, or the built-in decades of posts, with a row for the tags below every tier),
pack categories, and label sources (``llm:<model>``, ``neighbors``, ``human``, ``import``...).

A categorize run stores the coverage before and after it (the database's ``meta`` table), so the
report can show what the last run changed.
"""

from __future__ import annotations

import html
import json
import time

from tagloom.llm.categories import MAIN_CATEGORIES
from tagloom.tags.db import TagDB

LAST_RUN_KEY = "categorize_last_run"
# built-in frequency ranges when no tiers file is given: (label, min_posts), highest first
DEFAULT_RANGES = [(">=100k", 100_000), ("10k-100k", 10_000), ("1k-10k", 1_000), ("100-1k", 100), ("<100", 0)]


def ranges_from_tiers(tiers) -> list[tuple[str, int]]:
    """(label, min_posts) per tier, highest first, plus a row for what lies below the lowest tier."""
    out = [(t.name, t.min_posts) for t in sorted(tiers, key=lambda t: -t.min_posts)]
    if out and out[-1][1] > 0:
        out.append((f"below {out[-1][0]}", 0))
    return out


def compute(db: TagDB, ranges: list[tuple[str, int]] | None = None,
            danbooru_categories: tuple[int, ...] | None = (0,)) -> dict:
    ranges = ranges or DEFAULT_RANGES
    cond, params = ("1=1", []) if danbooru_categories is None else (
        f"category IN ({','.join('?' * len(danbooru_categories))})", list(danbooru_categories))
    with db._lock:
        rows = db.conn.execute(
            f"SELECT post_count, main_category, category_source FROM tags WHERE {cond}", params
        ).fetchall()
    total = {"tags": 0, "posts": 0, "labelled": 0, "labelled_posts": 0}
    tiers = {label: {"min_posts": lo, "tags": 0, "posts": 0, "labelled": 0, "labelled_posts": 0} for label, lo in ranges}
    cats = {c: {"tags": 0, "posts": 0} for c in MAIN_CATEGORIES}
    sources: dict[str, dict] = {}
    for posts, main, source in rows:
        posts = posts or 0
        label = next((lab for lab, lo in ranges if posts >= lo), ranges[-1][0])
        for d in (total, tiers[label]):
            d["tags"] += 1
            d["posts"] += posts
            if main:
                d["labelled"] += 1
                d["labelled_posts"] += posts
        if main:
            c = cats.setdefault(main, {"tags": 0, "posts": 0})
            c["tags"] += 1
            c["posts"] += posts
            s = sources.setdefault(source_group(source), {"tags": 0, "posts": 0})
            s["tags"] += 1
            s["posts"] += posts
    for d in [total, *tiers.values()]:
        d["by_count"] = d["labelled"] / d["tags"] if d["tags"] else 0.0
        d["post_weighted"] = d["labelled_posts"] / d["posts"] if d["posts"] else 0.0
    return {"total": total, "tiers": tiers, "categories": cats,
            "sources": dict(sorted(sources.items(), key=lambda kv: -kv[1]["tags"]))}


def source_group(source: str | None) -> str:
    """``llm:qwen2.5:7b-instruct`` stays whole (the model matters); unknown sources read ``other``."""
    if not source:
        return "other"
    return source


def save_last_run(db: TagDB, before: dict, after: dict) -> None:
    db.set_meta(LAST_RUN_KEY, json.dumps({"at": time.time(), "before": before["total"], "after": after["total"]}))


def last_run(db: TagDB) -> dict | None:
    raw = db.get_meta(LAST_RUN_KEY)
    try:
        return json.loads(raw) if raw else None
    except json.JSONDecodeError:
        return None


def change_line(before: dict, after: dict) -> str:
    return (f"coverage: {before['by_count']:.1%} -> {after['by_count']:.1%} by count, "
            f"{before['post_weighted']:.1%} -> {after['post_weighted']:.1%} post-weighted "
            f"({after['labelled'] - before['labelled']:+,} tags)")


def format_text(cov: dict, last: dict | None = None) -> str:
    t = cov["total"]
    lines = [f"{'tier':<16} {'min_posts':>9} {'tags':>8} {'labelled':>9} {'by count':>9} {'by posts':>9}"]
    for label, d in cov["tiers"].items():
        lines.append(f"{label:<16} {d['min_posts']:>9} {d['tags']:>8,} {d['labelled']:>9,} {d['by_count']:>9.1%} {d['post_weighted']:>9.1%}")
    lines.append(f"{'all':<16} {'':>9} {t['tags']:>8,} {t['labelled']:>9,} {t['by_count']:>9.1%} {t['post_weighted']:>9.1%}")
    lines += ["", f"{'category':<18} {'tags':>8} {'share':>7} {'posts':>14}"]
    for c, d in cov["categories"].items():
        share = d["tags"] / t["labelled"] if t["labelled"] else 0.0
        lines.append(f"{c:<18} {d['tags']:>8,} {share:>7.1%} {d['posts']:>14,}")
    lines += ["", f"{'label source':<34} {'tags':>8} {'posts':>14}"]
    for s, d in cov["sources"].items() or {"(none yet)": {"tags": 0, "posts": 0}}.items():
        lines.append(f"{s:<34} {d['tags']:>8,} {d['posts']:>14,}")
    if last:
        lines += ["", "last run: " + change_line(last["before"], last["after"])]
    return "\n".join(lines)


def _bar(share: float, width: int = 240) -> str:
    w = max(0.0, min(1.0, share)) * width
    return (f'<svg width="{width}" height="12" role="img"><rect width="{width}" height="12" fill="#e5e7eb"/>'
            f'<rect width="{w:.1f}" height="12" fill="#2563eb"/></svg>')


def format_html(cov: dict, last: dict | None = None, title: str = "TagLoom categorization coverage") -> str:
    """One page, inline SVG bars: coverage per tier (by count and by posts), categories, sources."""
    e = html.escape
    t = cov["total"]
    out = [f"<!doctype html><html><head><meta charset='utf-8'><title>{e(title)}</title>",
           "<style>body{font:14px system-ui,sans-serif;margin:2em;color:#111}table{border-collapse:collapse;margin-bottom:2em}"
           "td,th{padding:3px 10px;text-align:right}td:first-child,th:first-child{text-align:left}"
           "th{border-bottom:1px solid #999}</style></head><body>",
           f"<h1>{e(title)}</h1>",
           f"<p>{t['labelled']:,} of {t['tags']:,} tags labelled: <b>{t['by_count']:.1%}</b> by count, "
           f"<b>{t['post_weighted']:.1%}</b> weighted by posts.</p>"]
    if last:
        out.append(f"<p>Last run: {e(change_line(last['before'], last['after']))}</p>")
    out.append("<h2>By frequency tier</h2><table><tr><th>tier</th><th>tags</th><th>labelled</th>"
               "<th>by count</th><th></th><th>by posts</th><th></th></tr>")
    for label, d in cov["tiers"].items():
        out.append(f"<tr><td>{e(label)}</td><td>{d['tags']:,}</td><td>{d['labelled']:,}</td><td>{d['by_count']:.1%}</td>"
                   f"<td>{_bar(d['by_count'])}</td><td>{d['post_weighted']:.1%}</td><td>{_bar(d['post_weighted'])}</td></tr>")
    out.append("</table><h2>By category</h2><table><tr><th>category</th><th>tags</th><th>share</th><th></th></tr>")
    for c, d in cov["categories"].items():
        share = d["tags"] / t["labelled"] if t["labelled"] else 0.0
        out.append(f"<tr><td>{e(c)}</td><td>{d['tags']:,}</td><td>{share:.1%}</td><td>{_bar(share)}</td></tr>")
    out.append("</table><h2>Where the labels came from</h2><table><tr><th>source</th><th>tags</th><th>share</th><th></th></tr>")
    for s, d in cov["sources"].items():
        share = d["tags"] / t["labelled"] if t["labelled"] else 0.0
        out.append(f"<tr><td>{e(s)}</td><td>{d['tags']:,}</td><td>{share:.1%}</td><td>{_bar(share)}</td></tr>")
    out.append("</table></body></html>")
    return "\n".join(out)
