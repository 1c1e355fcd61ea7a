"""ComfyUI node wrappers (classic dict API: INPUT_TYPES / RETURN_TYPES / FUNCTION).

Each module in this package exports NODE_CLASS_MAPPINGS (and optionally
NODE_DISPLAY_NAME_MAPPINGS); they are merged here. Node classes stay thin: all logic is in
`tagloom/`. Node ids and input names are public interface (shared workflows refer to them): never
rename or reorder them, only append optional inputs. See docs/node-api.md.
"""

from __future__ import annotations

import importlib
import pkgutil

NODE_CLASS_MAPPINGS: dict = {}
NODE_DISPLAY_NAME_MAPPINGS: dict = {}

for _info in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
    if _info.name.startswith("_"):
        continue
    _module = importlib.import_module(f"{__name__}.{_info.name}")
    for _key, _cls in getattr(_module, "NODE_CLASS_MAPPINGS", {}).items():
        if _key in NODE_CLASS_MAPPINGS:
            raise RuntimeError(f"TagLoom: node id {_key!r} defined twice (nodes/{_info.name}.py)")
        NODE_CLASS_MAPPINGS[_key] = _cls
    NODE_DISPLAY_NAME_MAPPINGS.update(getattr(_module, "NODE_DISPLAY_NAME_MAPPINGS", {}))
