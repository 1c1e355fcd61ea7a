"""`tagloom describe`: a one-line description and a Chinese name (translation ``zh``) per tag, written
to the tag database with the same batched, resumable machinery as `tagloom categorize`; the search
index picks the changes up incrementally (``changed_at``)."""

from __future__ import annotations


def register(subparsers) -> None:
    from tagloom.cli.categorize import add_llm_options

    p = subparsers.add_parser("describe", help="write one-line descriptions and Chinese names with an LLM")
    add_llm_options(p, default_batch=None)
    p.set_defaults(handler=handle)


def handle(args) -> int:
    from tagloom.cli.categorize import run_task_cli

    if not args.batch_size:
        args.batch_size = 25  # descriptions are longer answers than categories
    return run_task_cli(args, "describe")
