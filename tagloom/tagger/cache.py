"""A small cache of loaded taggers for long-lived hosts (ComfyUI, the WebUI).

Loading EVA-02 Large takes seconds and ~1.2 GB, so hosts keep the last models loaded; hosts call
``free_all()`` when their user asks to free memory (ComfyUI's "Unload models" / ``/free``).
Callers hold a ``TaggerHandle`` (cheap, picklable settings), not the model: after ``free_all()`` the
next use loads again instead of keeping freed weights alive through a stale reference.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from dataclasses import dataclass

from tagloom import caches

_lock = threading.RLock()
_cache: "OrderedDict[tuple, object]" = OrderedDict()
MAX_LOADED = 2


@dataclass(frozen=True)
class TaggerHandle:
    model: str
    backend: str = "auto"
    device: str = "auto"
    precision: str = "fp32"

    @property
    def key(self) -> tuple:
        return (self.model, self.backend, self.device, self.precision)

    def get(self):
        """The loaded Tagger (loaded now if it is not in the cache)."""
        return get_tagger(self.model, self.backend, self.device, self.precision)

    def is_loaded(self) -> bool:
        with _lock:
            return self.key in _cache


def get_tagger(model: str, backend: str = "auto", device: str = "auto", precision: str = "fp32"):
    from tagloom.tagger.api import load_tagger

    key = (model, backend, device, precision)
    with _lock:
        tagger = _cache.get(key)
        if tagger is not None:
            _cache.move_to_end(key)
            return tagger
        tagger = load_tagger(model, backend=backend, device=device, precision=precision)
        _cache[key] = tagger
        while len(_cache) > MAX_LOADED:
            _, old = _cache.popitem(last=False)
            old.unload()
        return tagger


def free_all() -> int:
    """Unload every cached tagger; returns how many were freed."""
    with _lock:
        n = len(_cache)
        for tagger in _cache.values():
            tagger.unload()
        _cache.clear()
    if n:
        import gc

        gc.collect()
        caches.release_gpu_memory()
    return n


caches.register("taggers", free_all)


def loaded_keys() -> list[tuple]:
    with _lock:
        return list(_cache)
