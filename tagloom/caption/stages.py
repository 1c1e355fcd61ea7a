"""Three overlapping stages, read -> compute -> write, with nothing model-specific in them.

    read:    an iterator of items, pulled on its own thread (decoding happens there, or in the pool
             the iterator feeds from)
    compute: called on the calling thread for each item (the model runs here: one engine, one
             thread, so CUDA streams and ONNX sessions stay where they were made)
    write:   called on its own thread for each computed item; returns how many units it finished

Queues between the stages are bounded, so memory stays flat however large the folder. A stage's
exception ends the run and is raised on the calling thread; ``progress`` (the core protocol,
:mod:`tagloom.progress`) hears about finished units and may raise to cancel, after which what was
already computed is still written. The caption job (tagloom/caption/job.py) is this pipeline with a
decoder as ``read``, the engine as ``compute`` and the caption writer as ``write``; the tests drive it
with plain functions.
"""

from __future__ import annotations

import queue
import threading
from typing import Callable, Iterable

from tagloom.progress import Progress

_END = object()


class _Stage(threading.Thread):
    """Runs ``target(stage)`` on a thread; an exception is kept for the calling thread."""

    def __init__(self, name: str, target: Callable[["_Stage"], None]):
        super().__init__(name=name, daemon=True)
        self._target_fn = target
        self.error: BaseException | None = None
        self.stop = threading.Event()

    def run(self):
        try:
            self._target_fn(self)
        except BaseException as e:  # noqa: BLE001 - handed to the calling thread
            self.error = e


def _put(q: queue.Queue, item, stage: _Stage) -> bool:
    """Put unless ``stage`` was told to stop meanwhile (then False)."""
    while not stage.stop.is_set():
        try:
            q.put(item, timeout=0.1)
            return True
        except queue.Full:
            continue
    return False


def run_stages(
    read: Callable[[], Iterable],
    compute: Callable[[object], object],
    write: Callable[[object], int],
    progress: Progress,
    total: int,
    name: str = "tagloom",
    read_ahead: int = 2,
    write_behind: int = 4,
) -> None:
    """Run the three stages over everything ``read()`` yields; ``total`` units for the progress."""
    decoded: queue.Queue = queue.Queue(maxsize=read_ahead)
    results: queue.Queue = queue.Queue(maxsize=write_behind)
    lock = threading.Lock()
    finished = [0]

    def reading(stage):
        items = iter(read())
        try:
            for item in items:
                if not _put(decoded, item, stage):
                    return
            _put(decoded, _END, stage)
        finally:
            close = getattr(items, "close", None)
            if close is not None:  # a generator's `with decoder:` ends here, on this thread
                close()

    def writing(stage):
        while True:
            try:
                item = results.get(timeout=0.1)
            except queue.Empty:
                if stage.stop.is_set():  # cancelled: what was queued is written, then stop
                    return
                continue
            if item is _END:
                return
            n = write(item)
            with lock:
                finished[0] += n

    reader = _Stage(f"{name}-read", reading)
    writer = _Stage(f"{name}-write", writing)
    progress.start(total)
    reported = 0

    def report():
        nonlocal reported
        with lock:
            now = finished[0]
        if now > reported:
            progress.advance(now - reported)  # may raise: the user cancelled
            reported = now

    def raise_stage_errors():
        for stage in (reader, writer):
            if stage.error:
                raise stage.error

    reader.start()
    writer.start()
    try:
        while True:
            try:
                item = decoded.get(timeout=0.5)
            except queue.Empty:
                raise_stage_errors()
                report()
                continue
            if item is _END:
                break
            progress.check()
            out = compute(item)
            while not _put(results, out, writer):
                pass
            if writer.error:
                raise writer.error
            report()
        if reader.error:
            raise reader.error
        results.put(_END)
        writer.join()
        if writer.error:
            raise writer.error
        report()
    finally:
        reader.stop.set()
        writer.stop.set()  # the writer finishes the items already computed, then stops
        # Let the reader see the stop flag, then wait for it so no decode thread outlives the run.
        while reader.is_alive():
            try:
                decoded.get(timeout=0.05)
            except queue.Empty:
                pass
        writer.join(timeout=30)
