"""TagLoom in the Stable Diffusion WebUI (A1111 / Forge): the tag autocomplete API and its settings.

The WebUI imports every ``scripts/*.py`` of an extension; this one registers
``GET /tagloom/autocomplete`` (the same parameters and answer as the route on ComfyUI's server, from
the same host-neutral code in ``tagloom/server/autocomplete.py``) on the WebUI's FastAPI app and adds
a TagLoom section to Settings. ``javascript/tagloom-autocomplete.mjs`` is the popup.

Outside ComfyUI the tag database lives under ``TAGLOOM_HOME`` (default: the per-user data folder,
``~/.local/share/tagloom``); fill it with ``tagloom tags fetch`` or ``tagloom tags import FILE``.
"""

import logging
import os
import sys

# The WebUI runs this file by path, not as part of a package: the extension root (which holds the
# core library ``tagloom/``) must be on sys.path for ``import tagloom``. The WebUI puts it there only
# while it loads this file and then restores its saved sys.path list, dropping anything added here;
# so the package is imported now (its submodules are then found through the package itself) and the
# callbacks add the root again for anything imported later.
_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _ensure_path() -> None:
    if _ROOT not in sys.path:
        sys.path.insert(0, _ROOT)


_ensure_path()

import tagloom  # noqa: E402,F401
import tagloom.server.autocomplete  # noqa: E402,F401  (light: no search code is imported yet)
from modules import script_callbacks, shared  # noqa: E402  (the WebUI's own modules)

log = logging.getLogger("tagloom")

SECTION = ("tagloom", "TagLoom")


def on_app_started(_demo, app) -> None:
    _ensure_path()
    from fastapi.responses import JSONResponse

    from tagloom.errors import TagLoomError
    from tagloom.server.autocomplete import ROUTE, BadRequest, autocomplete, parse_params

    # A plain `def`: FastAPI runs it in its worker threads, so a slow first query (loading the tag
    # index, an embedding model) never blocks the server's event loop.
    @app.get(ROUTE)
    def tagloom_autocomplete(q: str = "", limit: str = "", semantic: str = ""):
        try:
            query, n, mode = parse_params({"q": q, "limit": limit, "semantic": semantic})
        except BadRequest as e:
            return JSONResponse({"error": str(e)}, status_code=400)
        try:
            return autocomplete(query, n, mode)
        except TagLoomError as e:
            return JSONResponse({"error": str(e)}, status_code=503)
        except Exception as e:  # noqa: BLE001 - a short answer for the popup, the traceback in the log
            log.exception("tagloom autocomplete failed for %r", query)
            return JSONResponse({"error": f"search failed: {type(e).__name__}"}, status_code=500)

    # Load the tag search now, on a thread of its own, rather than on the first popup's query.
    from tagloom.search.engine import warm_up

    warm_up()


def on_ui_settings() -> None:
    import gradio as gr

    def add(key, default, label, component=None, component_args=None):
        shared.opts.add_option(key, shared.OptionInfo(default, label, component, component_args, section=SECTION))

    add("tagloom_autocomplete_enabled", True, "Tag autocomplete in the prompt boxes")
    add("tagloom_autocomplete_max_results", 10, "Maximum suggestions", gr.Slider, {"minimum": 1, "maximum": 50, "step": 1})
    add("tagloom_autocomplete_semantic", True, "Semantic suggestions (find tags by meaning; needs `tagloom index build`)")
    add("tagloom_autocomplete_replace_underscores", True, "Insert tags with spaces instead of underscores")
    add("tagloom_autocomplete_escape_parentheses", True, "Escape parentheses in inserted tags, e.g. \\(genshin impact\\)")
    # Only one popup ever opens when tagcomplete is installed too: "tagloom" hides tagcomplete's
    # results while ours is open (and keeps Tab/Enter), "other" keeps ours closed (docs/autocomplete.md).
    add("tagloom_autocomplete_conflict", "tagloom", "When tagcomplete is installed too, whose popup opens",
        gr.Radio, {"choices": ["tagloom", "other"]})


script_callbacks.on_app_started(on_app_started)
script_callbacks.on_ui_settings(on_ui_settings)
