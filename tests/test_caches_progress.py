"""One cache registry and one progress/cancel protocol (issue 13 item 3): ComfyUI's "Unload models"
frees every cache TagLoom holds, and every node reports progress and stops on Cancel through
nodes/_comfy.py. ComfyUI's modules are the stand-in of tests/comfy_stub.py."""

from __future__ import annotations

import sys

import pytest

from tagloom import caches
from tagloom.errors import CancelledError
from tagloom.progress import Progress


def test_free_all_frees_every_registered_cache_even_when_one_fails(monkeypatch):
    monkeypatch.setattr(caches, "_registry", {})
    calls = []

    def broken():
        calls.append("broken")
        raise RuntimeError("boom")

    caches.register("a", lambda: calls.append("a") or 2)
    caches.register("broken", broken)
    caches.register("empty", lambda: calls.append("empty") or 0)
    assert caches.free_all() == {"a": 2}
    assert sorted(calls) == ["a", "broken", "empty"]


def test_the_core_caches_register_themselves():
    import tagloom.search.embedders  # noqa: F401
    import tagloom.search.engine  # noqa: F401
    import tagloom.tagger.cache  # noqa: F401

    assert {"taggers", "embedders", "search engines"} <= set(caches.names())


class _Module:
    """Records where a torch module was moved (a stand-in: no CUDA device exists here)."""

    def __init__(self):
        self.moves = []

    def to(self, device):
        self.moves.append(device)
        return self


def test_gpu_embedders_are_parked_on_the_cpu_and_come_back_on_the_next_encode():
    import threading

    from tagloom.search.embedders import Embedder, _Parking

    class GpuEmbedder(_Parking, Embedder):
        def __init__(self):
            super().__init__(spec="x", slug="x", device="cuda:0")
            self.model = _Module()
            self._lock = threading.Lock()

        def _torch_modules(self):
            return [self.model]

        def encode(self, texts, is_query=False, batch_size=64):
            with self._lock:
                self._unpark()

    emb = GpuEmbedder()
    assert emb.offload() is True and emb.model.moves == ["cpu"]
    assert emb.offload() is False  # already parked
    emb.encode(["a"])
    assert emb.model.moves == ["cpu", "cuda:0"]
    cpu = GpuEmbedder()
    cpu.device = "cpu"
    assert cpu.offload() is False and cpu.model.moves == []


def test_unload_models_in_comfyui_frees_search_engines_and_parks_embedders(comfy_pack, comfy, tmp_path, monkeypatch):
    from tagloom.search import embedders, engine
    from tagloom.tags.db import TagDB

    db_path = tmp_path / "tags.sqlite"
    TagDB(db_path).close()
    engine.get_engine(db_path)
    parked = []
    monkeypatch.setattr(embedders, "_CACHE", {("m", "cuda"): type("E", (), {"offload": lambda self: parked.append(1) or True})()})
    mm = comfy["comfy.model_management"]
    mm.unload_all_models()  # what POST /free {"unload_models": true} calls
    assert engine._ENGINES == {} and parked == [1]
    import comfy_stub

    assert comfy_stub.STATE.unloaded == 1  # ComfyUI's own unload still ran


def test_progress_protocol_and_its_callback_views():
    class Stoppable(Progress):
        stop = False
        seen: list = []

        def stopped(self):
            return self.stop

        def shown(self):
            self.seen.append((self.done, self.total))

    p = Stoppable()
    p.start(3)
    p.advance()
    p.callback()(2, 3)
    assert p.seen == [(0, 3), (1, 3), (2, 3)]
    p.stop = True
    with pytest.raises(CancelledError):
        p.advance()
    p.quiet_callback()(3, 3)  # never raises: the job polls stopped() between batches
    with pytest.raises(CancelledError):
        p.start(5)  # a stopped job does not begin


def test_comfy_progress_drives_the_bar_and_raises_comfyuis_interrupt(comfy_pack, comfy):
    import comfy_stub

    _comfy = sys.modules[comfy_pack.__name__ + ".nodes._comfy"]
    p = _comfy.ComfyProgress()
    p.start(4)
    p.advance(2)
    assert comfy_stub.STATE.progress[-1] == (2, 4)
    comfy_stub.STATE.interrupt = True
    assert p.stopped()
    with pytest.raises(comfy_stub.InterruptProcessingException):
        p.advance()


def test_nodes_use_the_one_adapter():
    """No node module talks to ComfyUI's progress bar, interrupt or GPU calls itself."""
    from pathlib import Path

    nodes = Path(__file__).resolve().parents[1] / "nodes"
    for f in nodes.glob("*.py"):
        if f.name == "_comfy.py":
            continue
        text = f.read_text()
        for name in ("ProgressBar", "throw_exception_if_processing_interrupted", "processing_interrupted",
                     "free_memory", "unload_all_models", "send_sync"):
            assert name not in text, f"{f.name} uses {name}: go through nodes/_comfy.py"
