"""The one place where the nodes meet ComfyUI's own modules (the adapter of the core's protocols).

- :class:`ComfyProgress`: the core's :class:`tagloom.progress.Progress` on ComfyUI's progress bar;
  Cancel raises ComfyUI's own interrupt exception, so the queue shows "interrupted", not an error.
- :func:`hook_unload`: ComfyUI's "Unload models" (``POST /free`` -> ``unload_all_models``) frees every
  cache TagLoom holds (:mod:`tagloom.caches`: taggers, embedders on the GPU, search engines).
- :func:`make_room`: ask ComfyUI to unload what it must before we put a model on its GPU (ComfyUI
  accounts only for its own models).
- :func:`follow_device`: ``auto`` follows ComfyUI's device choice (``--cpu`` is respected).
- :func:`send`: a message to the browser (``PromptServer.send_sync``).

The module name starts with ``_``: nodes/__init__.py does not look for node classes in it.
"""

from __future__ import annotations

import logging

from tagloom import caches
from tagloom.progress import Progress

log = logging.getLogger(__name__)


class ComfyProgress(Progress):
    def __init__(self) -> None:
        super().__init__()
        self._bar = None

    def stopped(self) -> bool:
        import comfy.model_management as mm

        return bool(mm.processing_interrupted())

    def halt(self) -> None:
        raise_if_interrupted()
        super().halt()  # stopped() said so, but the flag was cleared meanwhile

    def shown(self) -> None:
        import comfy.utils

        if self._bar is None:
            self._bar = comfy.utils.ProgressBar(max(self.total, 1))
        self._bar.update_absolute(self.done, max(self.total, 1))


def raise_if_interrupted() -> None:
    """After a core job stopped on :meth:`ComfyProgress.stopped`: ComfyUI's interrupt, if it was one."""
    import comfy.model_management as mm

    mm.throw_exception_if_processing_interrupted()


def hook_unload() -> None:
    """Wrap ``model_management.unload_all_models`` once so it frees our caches after ComfyUI's.

    ComfyUI tracks only its ModelPatcher models, and an ONNX session or a BGE-M3 encoder is not one;
    its unload path (the /free route's flag, handled in main.py) calls unload_all_models()."""
    try:
        import comfy.model_management as mm
    except ImportError:
        return
    original = mm.unload_all_models
    if getattr(original, "_tagloom_wrapped", False):
        return

    def unload_all_models(*args, **kwargs):
        try:
            return original(*args, **kwargs)
        finally:
            freed = caches.free_all()
            if freed:
                logging.info("TagLoom: freed %s", ", ".join(f"{n} {name}" for name, n in freed.items()))

    unload_all_models._tagloom_wrapped = True
    unload_all_models.__wrapped__ = original
    mm.unload_all_models = unload_all_models


def comfy_gpu():
    """ComfyUI's torch device when it is a CUDA device, else None."""
    try:
        import comfy.model_management as mm

        dev = mm.get_torch_device()
        return dev if dev.type == "cuda" else None
    except Exception:
        return None


def make_room(nbytes: int) -> None:
    """Ask ComfyUI to free ``nbytes`` on its GPU (a courtesy: loading reports real problems)."""
    gpu = comfy_gpu()
    if gpu is None:
        return
    try:
        import comfy.model_management as mm

        mm.free_memory(nbytes, gpu)
    except Exception:
        pass


def free_everything() -> None:
    """Before a child process needs the whole GPU (training): ComfyUI's models and ours."""
    import comfy.model_management as mm

    hook_unload()
    mm.unload_all_models()
    mm.soft_empty_cache()


def follow_device(device: str) -> str:
    """``auto`` becomes ``cpu`` when ComfyUI itself runs on the CPU (started with ``--cpu``)."""
    if device != "auto":
        return device
    try:
        import comfy.model_management as mm

        if mm.get_torch_device().type == "cpu":
            return "cpu"
    except Exception:
        pass
    return device


def send(event: str, data: dict) -> None:
    """A message to the browser when a PromptServer runs."""
    try:
        from server import PromptServer

        if PromptServer.instance is not None and hasattr(PromptServer.instance, "send_sync"):
            PromptServer.instance.send_sync(event, data)
    except Exception:
        pass


hook_unload()  # when the pack loads inside ComfyUI (nothing happens without it)
