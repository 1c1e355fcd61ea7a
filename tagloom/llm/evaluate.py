"""Scoring categorizations against a labelled file, and random samples for human spot checks."""

from __future__ import annotations

import csv
import random
from pathlib import Path

from tagloom.errors import InputFileError
from tagloom.llm.categories import CATEGORIES
from tagloom.tags.db import TagDB, canonical
from tagloom.tags.llm_ledger import Ledger


def read_labels(path: str | Path) -> dict[str, str]:
    """``tag,main_category`` CSV (a header row is optional) -> {tag: CATEGORY}."""
    path = Path(path)
    if not path.is_file():
        raise InputFileError(path, "labels file not found")
    labels: dict[str, str] = {}
    try:
        with path.open(newline="", encoding="utf-8-sig") as f:
            for lineno, row in enumerate(csv.reader(f), 1):
                if not row or not row[0].strip() or row[0].startswith("#"):
                    continue
                if len(row) < 2:
                    raise InputFileError(path, f"line {lineno}: expected 'tag,main_category', got {row!r}")
                tag, cat = row[0].strip(), row[1].strip().upper()
                if not labels and tag.lower() == "tag":  # the header, after any comment lines
                    continue
                if cat not in CATEGORIES:
                    raise InputFileError(path, f"line {lineno}: unknown category {row[1]!r} (one of {', '.join(CATEGORIES)})")
                labels[canonical(tag)] = cat
    except UnicodeDecodeError as e:
        raise InputFileError(path, f"not UTF-8 text: {e}") from e
    except csv.Error as e:
        raise InputFileError(path, f"bad CSV: {e}") from e
    if not labels:
        raise InputFileError(path, "no labelled rows")
    return labels


def score(labels: dict[str, str], predictions: dict[str, str | None]) -> dict:
    """Accuracy over labelled tags (a missing prediction counts as wrong), per-category precision,
    recall and F1, and macro F1 over the categories that occur in labels or predictions."""
    n = len(labels)
    correct = sum(1 for t, c in labels.items() if predictions.get(t) == c)
    missing = [t for t in labels if not predictions.get(t)]
    per: dict[str, dict] = {}
    cats_seen = set(labels.values()) | {p for t, p in predictions.items() if t in labels and p}
    for c in sorted(cats_seen):
        tp = sum(1 for t, l in labels.items() if l == c and predictions.get(t) == c)
        fp = sum(1 for t, l in labels.items() if l != c and predictions.get(t) == c)
        fn = sum(1 for t, l in labels.items() if l == c and predictions.get(t) != c)
        p = tp / (tp + fp) if tp + fp else 0.0
        r = tp / (tp + fn) if tp + fn else 0.0
        f1 = 2 * p * r / (p + r) if p + r else 0.0
        per[c] = {"precision": p, "recall": r, "f1": f1, "support": tp + fn}
    macro = sum(v["f1"] for v in per.values()) / len(per) if per else 0.0
    return {"n": n, "accuracy": correct / n if n else 0.0, "macro_f1": macro, "missing": len(missing), "per_category": per}


def confusion(labels: dict[str, str], predictions: dict[str, str | None]) -> dict[str, dict[str, int]]:
    """{true category: {predicted category or "-" for none: count}} over the labelled tags."""
    out: dict[str, dict[str, int]] = {}
    for t, c in labels.items():
        row = out.setdefault(c, {})
        p = predictions.get(t) or "-"
        row[p] = row.get(p, 0) + 1
    return out


def format_confusion(table: dict[str, dict[str, int]]) -> str:
    """Rows: the true category; columns: what was predicted (abbreviated), ``-`` = no prediction."""
    cols = [c for c in CATEGORIES if any(c in r for r in table.values())]
    if any("-" in r for r in table.values()):
        cols.append("-")
    short = {c: c[:5] for c in cols}
    lines = [f"{'true / predicted':<18} " + " ".join(f"{short[c]:>5}" for c in cols) + f" {'acc':>6}"]
    for c in CATEGORIES:
        if c not in table:
            continue
        row = table[c]
        n = sum(row.values())
        lines.append(f"{c:<18} " + " ".join(f"{row.get(k, 0) or '.':>5}" for k in cols) + f" {row.get(c, 0) / n:>6.1%}")
    return "\n".join(lines)


def predictions_from_db(db: TagDB, tags) -> dict[str, str | None]:
    out = {}
    for t in tags:
        row = db.get(t)
        out[t] = row["main_category"] if row else None
    return out


def format_report(result: dict) -> str:
    lines = [
        f"tags: {result['n']}  accuracy: {result['accuracy']:.3f}  macro F1: {result['macro_f1']:.3f}  "
        f"no prediction: {result['missing']}",
        f"{'category':<18} {'precision':>9} {'recall':>7} {'F1':>6} {'support':>8}",
    ]
    for c, v in result["per_category"].items():
        lines.append(f"{c:<18} {v['precision']:>9.3f} {v['recall']:>7.3f} {v['f1']:>6.3f} {v['support']:>8}")
    return "\n".join(lines)


def export_sample(db: TagDB, out: str | Path, n: int = 100, seed: int = 0, source: str | None = None) -> int:
    """A random sample of categorized tags as CSV for human review: tag, post_count, main_category,
    sub_category, confidence, source, reason, and an empty ``verdict`` column to fill in."""
    sql = "SELECT name, post_count, main_category, sub_category, category_confidence, category_source FROM tags WHERE main_category IS NOT NULL"
    params: tuple = ()
    if source:
        sql += " AND category_source LIKE ?"
        params = (source + "%",)
    with db._lock:
        rows = db.conn.execute(sql, params).fetchall()
    rng = random.Random(seed)
    picked = rng.sample(rows, min(n, len(rows)))
    ledger = Ledger(db)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with out.open("w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["tag", "post_count", "main_category", "sub_category", "confidence", "source", "reason", "verdict"])
        for r in picked:
            ans = ledger.answer("categorize", r[0]) or {}
            w.writerow([r[0], r[1], r[2], r[3] or "", r[4] if r[4] is not None else "", r[5] or "", ans.get("reason", ""), ""])
    return len(picked)
