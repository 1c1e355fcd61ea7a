"""``tagloom tags import|export|fetch|stats|danbooru``: manage the tag database."""

from __future__ import annotations

import json
import sys


def _db(args):
    from tagloom.tags.db import TagDB

    return TagDB(args.db) if args.db else TagDB()


def _import(args) -> int:
    from tagloom.tags.importers import import_file

    with _db(args) as db:
        for path in args.files:
            stats = import_file(db, path, args.format, lang=args.lang, overwrite=args.overwrite)
            print(f"{path}: " + ", ".join(f"{k} {v:,}" if isinstance(v, int) else f"{k} {v}" for k, v in stats.items()))
    return 0


def _export(args) -> int:
    from tagloom.tags.export import export

    with _db(args) as db:
        if args.output and args.output != "-":
            with open(args.output, "w", encoding="utf-8", newline="") as f:
                n = export(db, f, args.format)
            print(f"{n:,} tags -> {args.output}", file=sys.stderr)
        else:
            try:
                export(db, sys.stdout, args.format)
            except BrokenPipeError:  # `tagloom tags export | head`
                sys.stderr.close()
    return 0


def _fetch(args) -> int:
    from tagloom.tags.fetch import fetch, fetch_wiki

    with _db(args) as db:
        result = fetch(db, args.url, args.translations)
        t = result["tags"]
        print(f"{result['file']}: {t['format']}, {t['lines']:,} lines, {t.get('aliases_added', 0):,} new aliases")
        if "translations" in result:
            print(f"translations: {result['translations'].get('translations_added', 0):,} new")
        if not (args.wiki or args.wiki_file):
            return 0

        def progress(n):
            print(f"\rwiki pages: {n:,}", end="", file=sys.stderr, flush=True)

        # The tag list is committed above: a wiki source that fails only costs the descriptions.
        w = fetch_wiki(db, base_url=args.wiki_base_url, dump=args.wiki_file, min_interval=args.interval,
                       max_pages=args.max_pages, overwrite=args.overwrite, progress=progress)
    print(file=sys.stderr)
    if w.get("error"):
        print(f"warning: wiki descriptions not fetched: {w['error']} (the tag list is imported; run "
              f"`tagloom tags fetch --wiki` again to resume)", file=sys.stderr)
        return 0
    print("wiki: " + ", ".join(f"{k} {v:,}" for k, v in w.items() if isinstance(v, int)))
    return 0


def _danbooru(args) -> int:
    from tagloom.tags.danbooru import import_api

    def progress(endpoint, n):
        print(f"\r{endpoint}: {n:,}", end="", file=sys.stderr, flush=True)

    with _db(args) as db:
        counts = import_api(
            db, args.base_url, endpoints=args.what, min_posts=args.min_posts, max_pages=args.max_pages,
            restart=args.restart, min_interval=args.interval, progress=progress, overwrite=args.overwrite,
        )
    print(file=sys.stderr)
    print(", ".join(f"{k} {v:,}" for k, v in counts.items()))
    return 0


def _stats(args) -> int:
    from tagloom.tags.stats import compute, format_table

    with _db(args) as db:
        s = compute(db)
    print(json.dumps(s, ensure_ascii=False, indent=2) if args.json else format_table(s))
    return 0


def register(subparsers) -> None:
    from tagloom.tags.danbooru import DEFAULT_BASE, ENDPOINTS
    from tagloom.tags.fetch import DEFAULT_URL

    p = subparsers.add_parser("tags", help="tag database: import, export, fetch, stats")
    sub = p.add_subparsers(dest="tags_command", metavar="ACTION")

    def common(q):
        q.add_argument("--db", help="tag database file (default: tags.sqlite in the data folder)")

    q = sub.add_parser("import", help="import tag lists or translations (CSV, JSON lines)")
    q.add_argument("files", nargs="+", metavar="FILE", help="tag lists or translation files")
    q.add_argument("--format", default="auto",
                   choices=["auto", "tagcomplete", "selected_tags", "translations", "jsonl", "danbooru_json", "csv", "wiki"],
                   help="file format (auto: detected from the content; wiki: a Danbooru wiki dump, JSON/JSON lines/CSV)")
    q.add_argument("--lang", help="language of translations (default: detected from the script)")
    q.add_argument("--overwrite", action="store_true",
                   help="wiki: replace descriptions from other sources (tagloom describe) too")
    common(q)
    q.set_defaults(handler=_import)

    q = sub.add_parser("export", help="every tag with all its fields")
    q.add_argument("--format", default="jsonl", choices=["jsonl", "csv"], help="output format")
    q.add_argument("-o", "--output", help="file (default: standard output)")
    common(q)
    q.set_defaults(handler=_export)

    q = sub.add_parser("fetch", help="download a published tag list and import it")
    q.add_argument("--url", default=DEFAULT_URL, help=f"tag list URL (default: {DEFAULT_URL})")
    q.add_argument("--translations", metavar="URL", help="also download and import a translation CSV")
    q.add_argument("--wiki", action="store_true",
                   help="also get the Danbooru wiki descriptions from the API (resumable, one request per --interval)")
    q.add_argument("--wiki-base-url", default=DEFAULT_BASE, help="Danbooru server for --wiki")
    q.add_argument("--wiki-file", metavar="URL_OR_FILE", help="a wiki dump (JSON, JSON lines or CSV) to import instead of the API")
    q.add_argument("--interval", type=float, default=1.0, help="seconds between wiki API requests (default 1)")
    q.add_argument("--max-pages", type=int, help="stop the wiki after this many API pages (resume later)")
    q.add_argument("--overwrite", action="store_true", help="wiki descriptions replace those from other sources")
    common(q)
    q.set_defaults(handler=_fetch)

    q = sub.add_parser("danbooru", help="import tags, aliases and wiki descriptions from the Danbooru API (resumable)")
    q.add_argument("--base-url", default=DEFAULT_BASE, help="Danbooru server")
    q.add_argument("--what", nargs="+", default=list(ENDPOINTS), choices=list(ENDPOINTS), help="what to import (default: all of them)")
    q.add_argument("--min-posts", type=int, default=0, help="only tags with at least this many posts")
    q.add_argument("--max-pages", type=int, help="stop after this many pages per endpoint (resume later)")
    q.add_argument("--interval", type=float, default=1.0, help="seconds between requests (default 1)")
    q.add_argument("--restart", action="store_true", help="forget the saved cursors and read everything again")
    q.add_argument("--overwrite", action="store_true", help="wiki descriptions replace those from other sources")
    common(q)
    q.set_defaults(handler=_danbooru)

    q = sub.add_parser("stats", help="counts by category and frequency tier; pack-category coverage")
    q.add_argument("--json", action="store_true", help="print the counts as JSON")
    common(q)
    q.set_defaults(handler=_stats)

    p.set_defaults(handler=lambda a: (p.print_help(), 1)[1])
