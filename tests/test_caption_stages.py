"""The caption job's read -> compute -> write pipeline (tagloom/caption/stages.py), driven with plain
functions: no model, no images."""

from __future__ import annotations

import threading
import time

import pytest

from tagloom.caption.stages import run_stages
from tagloom.errors import CancelledError
from tagloom.progress import Progress


class Recorder(Progress):
    def __init__(self, stop_after: int | None = None):
        super().__init__()
        self.stop_after = stop_after
        self.shown_at: list[int] = []

    def stopped(self) -> bool:
        return self.stop_after is not None and self.done >= self.stop_after

    def shown(self) -> None:
        self.shown_at.append(self.done)


def test_every_item_is_read_computed_and_written_in_order_on_three_threads():
    threads = {"read": set(), "compute": set(), "write": set()}
    written = []

    def read():
        for i in range(20):
            threads["read"].add(threading.current_thread().name)
            yield i

    def compute(i):
        threads["compute"].add(threading.current_thread().name)
        return i * i

    def write(x):
        threads["write"].add(threading.current_thread().name)
        written.append(x)
        return 1

    progress = Recorder()
    run_stages(read, compute, write, progress, total=20, name="t")
    assert written == [i * i for i in range(20)]
    assert progress.done == 20 and progress.shown_at[0] == 0
    assert threads["read"] == {"t-read"} and threads["write"] == {"t-write"}
    assert threads["compute"] == {threading.current_thread().name}  # the model stays on the caller's thread


@pytest.mark.parametrize("where", ["read", "compute", "write"])
def test_an_error_in_any_stage_ends_the_run_on_the_calling_thread(where):
    def read():
        for i in range(10):
            if where == "read" and i == 3:
                raise OSError("disk gone")
            yield i

    def compute(i):
        if where == "compute" and i == 3:
            raise RuntimeError("model broke")
        return i

    def write(i):
        if where == "write" and i == 3:
            raise RuntimeError("cannot write")
        return 1

    name = f"stages-error-{where}"
    with pytest.raises((OSError, RuntimeError)):
        run_stages(read, compute, write, Recorder(), total=10, name=name)
    # the reader has ended; the writer ends within its queue timeout
    deadline = time.monotonic() + 5
    while [t for t in threading.enumerate() if t.name.startswith(name)] and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not [t for t in threading.enumerate() if t.name.startswith(name)]


def test_cancel_stops_reading_and_still_writes_what_was_computed():
    computed, written = [], []
    closed = threading.Event()

    def read():
        try:
            for i in range(1000):
                yield i
        finally:
            closed.set()  # the reader's resources (a decode pool) are released

    def compute(i):
        computed.append(i)
        return i

    def write(i):
        time.sleep(0.002)
        written.append(i)
        return 1

    with pytest.raises(CancelledError):
        run_stages(read, compute, write, Recorder(stop_after=5), total=1000)
    assert closed.wait(5)
    assert len(computed) < 1000
    # nothing computed is lost: the writer finished the items it had been handed
    assert written == computed[: len(written)] and len(computed) - len(written) <= 1
