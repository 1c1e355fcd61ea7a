"""The one shape of a trainer: the tagger's (training/tagger/train.py) and the LoRA's
(training/lora/train.py) are subclasses of ``Trainer``.

What every trainer shares lives here: the state folder and resume by fingerprint (a run resumed with
other settings or another dataset is refused, not silently mixed), the graceful stop (SIGTERM, which
the launcher sends on Cancel: finish the current step, save what resume needs, end with
CancelledError), the progress events (training/progress.py) and the loop itself, ``train(stop_after)``.

A subclass builds everything in ``__init__`` (ending with ``_setup()``) and fills in the hooks:

- ``_setup()``: model, data, optimizer, schedule; sets ``total_steps`` and ``steps_per_epoch``.
- ``train_step()``: one optimizer step; advances ``self.step``; returns its loss.
- ``after_step(loss)``: what follows a step (checkpoints, samples, the tagger's validation).
- ``fingerprint()``: what must not change between a run and its resume (a string).
- ``save_state()`` / ``load_state()``: write / read back everything resume needs, through
  ``write_state`` / ``read_state`` (atomic, fingerprinted); ``load_state`` answers False when there
  is no state.
- ``finish()``: write the final output and return its path.
- ``start_fields()``, ``step_fields(loss)``, ``done_fields()``: the progress events' own fields.
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

from tagloom.errors import CancelledError, TagLoomError
from tagloom.training.progress import is_main_process, log, report


class Trainer:
    kind = ""  # the "start" event's kind: "tagger", "lora"
    state_file = "state.tagloom"  # the resumable state, inside state_dir
    fingerprint_fields = "settings"  # named in the error when a resume's fingerprint differs
    HOOKS = ("_setup", "train_step", "after_step", "save_state", "load_state", "fingerprint", "finish",
             "_on_signal", "train")

    out: Path
    state_dir: Path

    def __init__(self, opts):
        self.opts = opts
        self.step = 0
        self.total_steps = 0
        self.steps_per_epoch = 1
        self.started_at = time.time()
        self._stop = False

    # --- precision ----------------------------------------------------------------------------
    def _resolve_precision(self, off: str) -> str:
        """Sets ``precision`` (the option with "auto" decided for ``self.device``; ``off`` when it
        decides on full precision) and ``amp_dtype`` (None: no autocast)."""
        import torch

        precision = self.opts.precision
        if precision == "auto":
            from tagloom.training.precision import auto_mixed_precision

            precision = auto_mixed_precision(self.device) or off
        self.precision = precision
        self.amp_dtype = {"fp16": torch.float16, "bf16": torch.bfloat16}.get(precision)
        return precision

    def autocast(self):
        import contextlib

        import torch

        return torch.autocast(self.device.type, dtype=self.amp_dtype) if self.amp_dtype else contextlib.nullcontext()

    # --- hooks --------------------------------------------------------------------------------
    def _setup(self) -> None:
        raise NotImplementedError

    def train_step(self) -> float:
        raise NotImplementedError

    def after_step(self, loss: float) -> None:
        pass

    def fingerprint(self) -> str:
        raise NotImplementedError

    def save_state(self) -> None:
        raise NotImplementedError

    def load_state(self) -> bool:
        raise NotImplementedError

    def finish(self) -> Path:
        raise NotImplementedError

    def done(self) -> bool:
        return self.step >= self.total_steps

    def start_fields(self) -> dict:
        return {}

    def step_fields(self, loss: float) -> dict:
        return {"loss": loss, "lr": self.scheduler.get_last_lr()[0], "epoch": self.step // self.steps_per_epoch}

    def done_fields(self) -> dict:
        return {}

    # --- the state folder ---------------------------------------------------------------------
    @property
    def state_path(self) -> Path:
        return self.state_dir / self.state_file

    def write_state(self, state: dict) -> None:
        """Write the state (with this run's fingerprint) atomically: a kill while saving leaves the
        previous state intact. Only the main process writes."""
        import torch

        if not is_main_process():
            return
        self.state_dir.mkdir(parents=True, exist_ok=True)
        tmp = self.state_path.with_name(self.state_path.name + ".tmp")
        torch.save({**state, "fingerprint": self.fingerprint()}, str(tmp))
        os.replace(tmp, self.state_path)

    def read_state(self) -> dict | None:
        """The saved state, None when there is none; refused when its fingerprint differs."""
        import torch

        path = self.state_path
        if not path.is_file():
            return None
        state = torch.load(str(path), map_location="cpu", weights_only=True)
        self.check_fingerprint(state, path)
        return state

    def check_fingerprint(self, state: dict, path: Path) -> None:
        if state.get("fingerprint") != self.fingerprint():
            raise TagLoomError(f"{path}: saved with different settings or dataset ({self.fingerprint_fields}); "
                               "remove it or train without --resume")

    def resume(self) -> None:
        if self.opts.resume and self.load_state():
            log(f"resumed at step {self.step}/{self.total_steps} from {self.state_dir}")
        elif self.opts.resume:
            log(f"--resume: no state in {self.state_dir}; starting fresh")

    # --- stopping -----------------------------------------------------------------------------
    def _on_signal(self, signum, frame):
        self._stop = True  # finish the current step, save state, exit: cancel loses nothing

    def stop_requested(self) -> bool:
        return self._stop

    # --- the loop -----------------------------------------------------------------------------
    def train(self, stop_after: int | None = None) -> Path:
        """Run to the end (or ``stop_after`` steps, saving the state) and return the output path."""
        self.resume()
        old = None
        try:
            old = signal.signal(signal.SIGTERM, self._on_signal)
        except ValueError:  # not the main thread (a test or a node calling in-process)
            pass
        try:
            self._t_start = time.time()
            report(event="start", kind=self.kind, step=self.step, total=self.total_steps, **self.start_fields())
            while not self.done():
                loss = self.train_step()
                report(step=self.step, total=self.total_steps, **self.step_fields(loss))
                self.after_step(loss)
                if self.stop_requested():
                    self.save_state()
                    raise CancelledError(f"stopped at step {self.step}; state saved in {self.state_dir}, "
                                         "rerun with --resume")
                if stop_after is not None and self.step >= stop_after:
                    self.save_state()
                    return self.out
            self.save_state()
            path = self.finish()
        finally:
            if old is not None:
                signal.signal(signal.SIGTERM, old)
        report(event="done", out=str(path), step=self.step, total=self.total_steps, **self.done_fields())
        log(f"wrote {path}")
        return path
