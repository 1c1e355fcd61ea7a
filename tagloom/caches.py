"""Every process-wide cache TagLoom holds, in one registry.

Long-lived hosts keep models and indexes loaded between calls: taggers (``tagloom.tagger.cache``),
embedding models (``tagloom.search.embedders``), tag-search engines (``tagloom.search.engine``) and
chromadb clients (``tagloom.search.dense``). Each registers how to free itself when its module is
imported, so a host's "free memory" (ComfyUI's "Unload models" / ``POST /free``) calls
:func:`free_all` once and frees all of them, models on the GPU included: a cache whose module was
never imported holds nothing. Whatever is freed loads again on its next use.
"""

from __future__ import annotations

import gc
import logging
import sys
import threading
from typing import Callable

log = logging.getLogger(__name__)

_lock = threading.Lock()
_registry: dict[str, Callable[[], int]] = {}


def register(name: str, free: Callable[[], int]) -> None:
    """``free()`` drops what the cache holds and returns how many entries it freed."""
    with _lock:
        _registry[name] = free


def names() -> list[str]:
    with _lock:
        return sorted(_registry)


def free_all() -> dict[str, int]:
    """Free every registered cache; returns ``{name: entries freed}`` for those that held any."""
    with _lock:
        items = list(_registry.items())
    freed = {}
    for name, free in items:
        try:
            n = free()
        except Exception as e:  # one broken cache must not keep the others' memory
            log.warning("TagLoom: freeing the %s cache failed: %s", name, e)
            continue
        if n:
            freed[name] = n
    if freed:
        gc.collect()
        release_gpu_memory()
    return freed


def release_gpu_memory() -> None:
    """Give torch's cached CUDA blocks back to the driver (only when torch is already imported)."""
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_available():
        torch.cuda.empty_cache()
