"""Run a trainer as a child process and follow it: the ComfyUI node's engine, usable anywhere.

Why a child process: training holds the GPU for hours; in a child, ComfyUI stays responsive, a crash
cannot take the server down, all memory returns when it ends, and Cancel can kill it. The child is
``sys.executable -m tagloom train ...`` (never a bare ``python``: portable installs have another
one on PATH), or ``-m torch.distributed.run`` for several GPUs. Progress arrives as
``TAGLOOM_PROGRESS`` lines (tagloom.training.progress). A non-zero exit becomes a TagLoomError
carrying the end of the child's output.
"""

from __future__ import annotations

import collections
import os
import queue
import signal
import subprocess
import sys
import threading
from pathlib import Path
from typing import Callable

import tagloom
from tagloom.errors import TagLoomError
from tagloom.training.progress import parse

# The folder holding the tagloom package: the repository (a checkout, ComfyUI's custom_nodes) or
# site-packages (an install). The child starts there, and `python -m` puts its working folder first
# on sys.path, so the child imports this very tagloom (and tagloom.training) with no PYTHONPATH.
ROOT = Path(tagloom.__file__).resolve().parents[1]
REPO = ROOT  # the old name


def command(args: list[str], gpus: int = 1) -> list[str]:
    if gpus > 1:
        return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={gpus}",
                "-m", "tagloom", "train", *args]
    return [sys.executable, "-m", "tagloom", "train", *args]


class TrainingRun:
    def __init__(self, args: list[str], gpus: int = 1, env: dict | None = None):
        child_env = dict(os.environ if env is None else env)
        child_env["PYTHONUNBUFFERED"] = "1"
        child_env.pop("PYTHONSAFEPATH", None)  # it would keep the working folder (ROOT) off sys.path
        kwargs = {}
        if os.name == "posix":
            kwargs["start_new_session"] = True  # its own process group: Cancel also ends DataLoader workers
        else:
            kwargs["creationflags"] = subprocess.CREATE_NEW_PROCESS_GROUP
        self.argv = command(args, gpus)
        self.proc = subprocess.Popen(self.argv, cwd=str(ROOT), env=child_env, stdout=subprocess.PIPE,
                                     stderr=subprocess.STDOUT, text=True, bufsize=1, encoding="utf-8",
                                     errors="replace", **kwargs)
        self.lines: collections.deque[str] = collections.deque(maxlen=200)
        self._queue: queue.Queue = queue.Queue()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self):
        for line in self.proc.stdout:
            self._queue.put(line.rstrip("\n"))
        self._queue.put(None)

    def stop(self, grace: float = 30.0) -> None:
        """SIGTERM (a trainer finishes its step and saves its state on it), then kill after ``grace`` seconds."""
        if self.proc.poll() is not None:
            return
        try:
            if os.name == "posix":
                os.killpg(self.proc.pid, signal.SIGTERM)
            else:
                self.proc.send_signal(signal.CTRL_BREAK_EVENT)
            self.proc.wait(grace)
        except (subprocess.TimeoutExpired, ProcessLookupError, OSError):
            pass
        if self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGKILL) if os.name == "posix" else self.proc.kill()
            except (ProcessLookupError, OSError):
                pass
            self.proc.wait(30)

    def follow(self, on_progress: Callable[[dict], None] | None = None, check_cancel: Callable[[], None] | None = None,
               on_line: Callable[[str], None] | None = None, poll: float = 0.25) -> int:
        """Pump output until the child ends. ``check_cancel`` may raise (ComfyUI's interrupt): the
        child is stopped and the exception propagates. Returns 0, else raises TagLoomError."""
        try:
            while True:
                if check_cancel is not None:
                    check_cancel()
                try:
                    line = self._queue.get(timeout=poll)
                except queue.Empty:
                    continue
                if line is None:  # the child closed its output: it is ending
                    break
                event = parse(line)
                if event is not None:
                    if on_progress is not None:
                        on_progress(event)
                    continue
                self.lines.append(line)
                if on_line is not None:
                    on_line(line)
        except BaseException:
            self.stop()
            raise
        code = self.proc.wait()
        if code != 0:
            tail = "\n".join(list(self.lines)[-15:])
            raise TagLoomError(f"training failed (exit status {code}): {' '.join(self.argv[1:4])} ...\n{tail}")
        return code


def run(args: list[str], gpus: int = 1, **follow) -> int:
    return TrainingRun(args, gpus).follow(**follow)
