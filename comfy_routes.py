"""HTTP routes on ComfyUI's own server (PromptServer). Thin: handlers live in tagloom.server.

Each route module in tagloom/server registers itself through ``add_routes(routes)``; this file only
finds ComfyUI's route table. Outside ComfyUI (tests, CLI) there is no PromptServer and nothing happens.
"""

import logging

log = logging.getLogger("tagloom")


def _register() -> None:
    try:
        from server import PromptServer  # ComfyUI's module
    except ImportError:
        return
    instance = getattr(PromptServer, "instance", None)
    if instance is None:
        return
    from tagloom.server import add_routes

    add_routes(instance.routes)
    # Load the tag search now, on a thread of its own, rather than on the first popup's query.
    from tagloom.search.engine import warm_up

    warm_up()


_register()
