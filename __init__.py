"""ComfyUI entry point of the TagLoom pack.

ComfyUI imports this folder as a package named after the folder (e.g. ``ComfyUI-TagLoom``, hyphen
included). The core library `tagloom/` is imported by absolute name, so its parent folder goes on
sys.path. Importing the pack loads no model and touches no network.
"""

import os
import sys

_HERE = os.path.dirname(os.path.abspath(__file__))
if _HERE not in sys.path:
    sys.path.insert(0, _HERE)

from tagloom.config import register_comfy_model_folder  # noqa: E402

register_comfy_model_folder()

if __package__:  # imported as a package: by ComfyUI, or by pytest from a folder with a valid name
    from .nodes import NODE_CLASS_MAPPINGS, NODE_DISPLAY_NAME_MAPPINGS  # noqa: E402
    from . import comfy_routes  # noqa: E402,F401  (registers HTTP routes on ComfyUI's server, if any)
else:
    # Imported as a plain module: pytest collecting from a checkout named ComfyUI-TagLoom (not a
    # valid module name) imports this file on its own, where relative imports cannot work. There is
    # no ComfyUI to register with there; the tests import nodes/ themselves (tests/conftest.py).
    NODE_CLASS_MAPPINGS, NODE_DISPLAY_NAME_MAPPINGS = {}, {}

WEB_DIRECTORY = "./web"

__all__ = ["NODE_CLASS_MAPPINGS", "NODE_DISPLAY_NAME_MAPPINGS", "WEB_DIRECTORY"]
