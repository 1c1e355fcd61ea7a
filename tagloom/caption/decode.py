"""CPU decoding for caption jobs: file -> the model's input pixels, on every core, never raising.

The pixels are the wd-v3 reference preprocessing stopped just before the float conversion:
alpha composited on white, padded to a centred white square, bicubic-resized to the model's input
size, as uint8 RGB (S, S, 3). Stopping at uint8 is exact (PIL's resize works in uint8) and moves a
quarter of the bytes between processes and to the GPU; the engines make the model's float input
(tagloom.caption.engines.to_model_input).

A worker never raises: it returns (pixels, None) or (None, reason), so one bad image is reported
and the run goes on.
"""

from __future__ import annotations

import os
from collections import deque
from concurrent.futures import Executor, ProcessPoolExecutor, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator

import numpy as np


@dataclass
class Decoded:
    path: Path
    pixels: np.ndarray | None  # uint8 (S, S, 3) RGB, or None when the image failed
    error: str | None = None


def decode_file(path: Path, size: int) -> Decoded:
    """One file -> Decoded, through the one image path (tagloom.images.load_square: the same
    decoding, reduction hint and wd-v3 geometry as the single-image path and the trainers). Never
    raises: a worker must not take the pool down."""
    try:
        from tagloom.images import load_square

        return Decoded(Path(path), np.asarray(load_square(path, size), dtype=np.uint8))
    except Exception as e:  # noqa: BLE001 - every failure becomes a reported reason
        return Decoded(Path(path), None, _reason(e))


def _reason(e: Exception) -> str:
    from tagloom.errors import InputFileError

    if isinstance(e, InputFileError):
        return e.problem
    text = str(e) or type(e).__name__
    return f"{type(e).__name__}: {text}" if type(e).__name__ not in text else text


def default_workers() -> int:
    """Every core the process may use (cgroup/affinity aware)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # macOS, Windows
        return max(1, os.cpu_count() or 1)


class CpuDecoder:
    """Decodes files on a pool, in input order, with a bounded read-ahead window.

    mode "thread": Pillow releases the GIL while it decodes and resizes, so threads use all cores
    without copying pixels between processes (the default). mode "process": separate processes
    (spawned, never forked: forking a process that runs ONNX Runtime or torch threads can deadlock)
    for decoders that hold the GIL.
    """

    def __init__(self, size: int, workers: int | None = None, mode: str = "thread",
                 prefetch: int | None = None):
        if mode not in ("thread", "process"):
            raise ValueError(f"decode mode must be 'thread' or 'process', not {mode!r}")
        self.size = size
        self.workers = workers or default_workers()
        self.mode = mode
        self.prefetch = prefetch or max(8, 4 * self.workers)
        self._pool: Executor | None = None

    def __enter__(self):
        if self.mode == "thread":
            self._pool = ThreadPoolExecutor(self.workers, thread_name_prefix="tagloom-decode")
        else:
            import multiprocessing

            self._pool = ProcessPoolExecutor(self.workers, mp_context=multiprocessing.get_context("spawn"))
        return self

    def __exit__(self, *exc):
        self.close()

    def close(self):
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None

    def map(self, paths: Iterable[Path]) -> Iterator[Decoded]:
        assert self._pool is not None, "use CpuDecoder as a context manager"
        it = iter(paths)
        window: deque = deque()
        for path in it:
            window.append(self._pool.submit(decode_file, path, self.size))
            if len(window) >= self.prefetch:
                break
        while window:
            result = window.popleft().result()
            nxt = next(it, None)
            if nxt is not None:
                window.append(self._pool.submit(decode_file, nxt, self.size))
            yield result
