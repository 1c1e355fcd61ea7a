"""aiohttp route handlers shared by ComfyUI (its PromptServer) and tests (a plain aiohttp app).

``add_routes(routes)`` takes an aiohttp ``RouteTableDef`` (ComfyUI's ``PromptServer.instance.routes``)
and adds every TagLoom route. Route modules in this package define ``add_routes(routes)`` too and are
discovered here. Every route lives under ``/tagloom/`` and serves only what it is meant to.
"""

from __future__ import annotations

import importlib
import pkgutil


def add_routes(routes) -> None:
    for info in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
        if info.name.startswith("_"):
            continue
        module = importlib.import_module(f"{__name__}.{info.name}")
        register = getattr(module, "add_routes", None)
        if register is not None:
            register(routes)
