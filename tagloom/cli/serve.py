"""``tagloom serve``: the autocomplete route (``GET /tagloom/autocomplete``) on a standalone aiohttp
server, for scripts and other front ends (docs/autocomplete.md)."""

from __future__ import annotations

import argparse


def _port(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a port number: {text!r}") from None
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"port must be 0..65535, got {value}")
    return value


def _serve(args) -> int:
    from tagloom.errors import TagLoomError
    from tagloom.server.standalone import run

    try:
        return run(args.host, args.port, args.db)
    except OSError as e:  # address in use, no such interface, permission denied below 1024
        raise TagLoomError(f"cannot listen on {args.host}:{args.port}: {e.strerror or e}") from None


def register(subparsers) -> None:
    from tagloom.server.standalone import DEFAULT_HOST, DEFAULT_PORT

    p = subparsers.add_parser(
        "serve",
        help="serve tag autocomplete over HTTP (GET /tagloom/autocomplete) for scripts and other front ends",
        description="Serve GET /tagloom/autocomplete?q=&limit=&semantic= (the route ComfyUI and the WebUI "
                    "serve, with the same checks and limits) until Ctrl+C. No authentication: keep it on "
                    "127.0.0.1 unless the network is yours.",
    )
    p.add_argument("--host", default=DEFAULT_HOST,
                   help="address to listen on (0.0.0.0 = every interface, reachable from other machines)")
    p.add_argument("--port", type=_port, default=DEFAULT_PORT, help="TCP port; 0 picks a free one (printed at start)")
    p.add_argument("--db", help="tag database file (default: tags.sqlite in TagLoom's data folder)")
    p.set_defaults(handler=_serve)
