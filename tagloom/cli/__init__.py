"""The `tagloom` command line.

Each module in this package that defines ``register(subparsers)`` adds one command or command
group (``tag``, ``tags``, ``suggest``, ``train`` ...). Modules are discovered, so adding a command is
adding a file. Handlers import heavy libraries lazily so `tagloom --help` stays instant.

A handler returns an exit code. A TagLoomError (bad input, unreachable server, ...) is printed as
``error: <message>`` with exit status 2, without a traceback.
"""

from __future__ import annotations

import argparse
import importlib
import os
import pkgutil
import sys

from tagloom import __version__
from tagloom.errors import CancelledError, TagLoomError


class _Parser(argparse.ArgumentParser):
    """Every parser of the tree (sub-commands inherit the class) shows each option's default."""

    def __init__(self, *args, **kwargs):
        from tagloom.options import HelpFormatter

        kwargs.setdefault("formatter_class", HelpFormatter)
        super().__init__(*args, **kwargs)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="tagloom", description="Danbooru tagging, tag search, LLM tools and training.")
    parser.add_argument("--version", action="version", version=f"tagloom {__version__}")
    parser.add_argument(
        "--comfyui",
        metavar="DIR",
        help="use this ComfyUI install's folders (models/tagloom, user/tagloom) instead of TAGLOOM_HOME",
    )
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for info in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
        if info.name.startswith("_"):
            continue
        module = importlib.import_module(f"{__name__}.{info.name}")
        register = getattr(module, "register", None)
        if register is not None:
            register(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.comfyui:
        root = os.path.abspath(os.path.expanduser(args.comfyui))
        if not os.path.isdir(os.path.join(root, "models")):
            print(f"error: {root}: not a ComfyUI folder (no models/ inside)", file=sys.stderr)
            return 2
        os.environ["TAGLOOM_COMFYUI"] = root
    handler = getattr(args, "handler", None)
    if handler is None:
        parser.print_help()
        return 1
    try:
        return int(handler(args) or 0)
    except CancelledError as e:
        print(f"cancelled: {e}", file=sys.stderr)
        return 130
    except KeyboardInterrupt:
        print("cancelled", file=sys.stderr)
        return 130
    except TagLoomError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
