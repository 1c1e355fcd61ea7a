"""Validation metrics on a fixed vocabulary (numpy only).

- macro F1 at the threshold where macro precision equals macro recall (SmilingWolf's figure; the
  threshold found is what threshold.json calibrates to),
- mAP (mean over tags with at least one positive of average precision),
- the same macro F1 per Danbooru category.
Tags without any positive in validation are left out of the macro averages (their recall is
undefined); the count of tags evaluated is reported.
"""

from __future__ import annotations

import numpy as np

THRESHOLDS = np.round(np.arange(0.01, 1.0, 0.01), 2)


def _prf(probs: np.ndarray, targets: np.ndarray, t: float):
    pred = probs >= t
    tp = (pred & (targets > 0.5)).sum(0).astype(np.float64)
    fp = (pred & (targets <= 0.5)).sum(0).astype(np.float64)
    fn = (~pred & (targets > 0.5)).sum(0).astype(np.float64)
    precision = np.divide(tp, tp + fp, out=np.zeros_like(tp), where=(tp + fp) > 0)
    recall = np.divide(tp, tp + fn, out=np.zeros_like(tp), where=(tp + fn) > 0)
    f1 = np.divide(2 * precision * recall, precision + recall, out=np.zeros_like(tp), where=(precision + recall) > 0)
    return precision, recall, f1


def pr_equal_threshold(probs: np.ndarray, targets: np.ndarray) -> tuple[float, float]:
    """(threshold, macro F1) where macro precision and macro recall are closest, over tags with positives."""
    cols = targets.sum(0) > 0
    if not cols.any():
        return 0.5, 0.0
    p, t = probs[:, cols], targets[:, cols]
    best = None
    for th in THRESHOLDS:
        precision, recall, f1 = _prf(p, t, float(th))
        gap = abs(precision.mean() - recall.mean())
        if best is None or gap < best[0] - 1e-12:
            best = (gap, float(th), float(f1.mean()))
    return best[1], best[2]


def average_precision(scores: np.ndarray, labels: np.ndarray) -> float:
    order = np.argsort(-scores, kind="stable")
    labels = labels[order] > 0.5
    if not labels.any():
        return float("nan")
    hits = np.cumsum(labels)
    precision_at = hits / np.arange(1, len(labels) + 1)
    return float(precision_at[labels].mean())


def evaluate(probs: np.ndarray, targets: np.ndarray, categories: list[int]) -> dict:
    threshold, f1 = pr_equal_threshold(probs, targets)
    aps = [average_precision(probs[:, j], targets[:, j]) for j in range(probs.shape[1])]
    aps = [a for a in aps if not np.isnan(a)]
    cats = np.array(categories)
    per_cat: dict[str, dict] = {}
    names = {9: "rating", 0: "general", 4: "character", 1: "artist", 3: "copyright", 5: "meta"}
    for c in sorted(set(categories)):
        cols = cats == c
        t_c, f1_c = pr_equal_threshold(probs[:, cols], targets[:, cols])
        _p, _r, f1_at_global = _prf(probs[:, cols], targets[:, cols], threshold)
        with_pos = targets[:, cols].sum(0) > 0
        per_cat[names.get(c, str(c))] = {
            "threshold": t_c, "f1_at_pr": f1_c,
            "f1_at_global": float(f1_at_global[with_pos].mean()) if with_pos.any() else 0.0,
            "tags_evaluated": int(with_pos.sum()),
        }
    return {
        "metric": "macro F1 at the threshold where macro precision = macro recall",
        "threshold": threshold, "macro_f1": f1, "map": float(np.mean(aps)) if aps else 0.0,
        "tags_evaluated": int((targets.sum(0) > 0).sum()), "per_category": per_cat,
    }
