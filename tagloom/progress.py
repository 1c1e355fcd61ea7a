"""The one progress/cancel protocol of the core.

A long job (captioning a folder, an LLM run, tagging a batch, a training run followed from its
child process) reports to a :class:`Progress`: ``start(total)`` once, then ``advance(n)`` or
``update(done, total)``, and ``check()`` between units of work, which raises
:class:`~tagloom.errors.CancelledError` when the user stopped the job. Hosts subclass it once:
ComfyUI in ``nodes/_comfy.py`` (progress bar and Cancel), the CLI with a text bar. APIs that
take plain callbacks get them from :meth:`Progress.callback` and :meth:`Progress.stopped`, so every
host adapter is written once, whatever shape the API it calls has.
"""

from __future__ import annotations

from tagloom.errors import CancelledError


class Progress:
    """Silent and never stopped: what a job uses when its caller passes nothing."""

    def __init__(self) -> None:
        self.total = 0
        self.done = 0

    # --- what jobs call -------------------------------------------------------------------------
    def start(self, total: int) -> None:
        self._stop_if_stopped()  # a job the user already stopped does not begin
        self.total = max(int(total), 0)
        self.done = 0
        self.shown()

    def advance(self, n: int = 1) -> None:
        self.update(self.done + int(n))

    def update(self, done: int, total: int | None = None) -> None:
        """Absolute position; checks for a stop first, so a cancelled job ends at the next report."""
        self._stop_if_stopped()
        if total is not None:
            self.total = max(int(total), 0)
        self.done = int(done)
        self.shown()

    def check(self) -> None:
        """Called between units of work (before every batch)."""
        self._stop_if_stopped()

    def _stop_if_stopped(self) -> None:
        if self.stopped():
            self.halt()

    def close(self) -> None:
        pass

    # --- what hosts override --------------------------------------------------------------------
    def stopped(self) -> bool:
        """True once the user asked to stop."""
        return False

    def shown(self) -> None:
        """Show ``self.done`` of ``self.total``."""

    def halt(self) -> None:
        """Raise the host's exception for a stop."""
        raise CancelledError("stopped by the user")

    # --- views for APIs written with callbacks ------------------------------------------------
    def callback(self):
        """``(done, total) -> None``, raising on a stop (for ``progress=`` arguments)."""
        return lambda done, total: self.update(done, total)

    def quiet_callback(self):
        """``(done, total) -> None`` that never raises: for APIs that poll :meth:`stopped` themselves
        between batches and must store a finished batch before they stop (the LLM jobs)."""

        def report(done, total):
            try:
                self.update(done, total)
            except Exception:  # the stop (any host's exception for it) is seen by stopped() next
                pass

        return report
