"""Ctrl-C and SIGTERM during a run: the first asks the trainer to finish the step and save; the
second stops at once (the last complete checkpoint stays, by the save protocol)."""

from __future__ import annotations

import signal
import sys
import threading


class StopSignals:
    """Installed for the whole run (``with StopSignals(...) as stop``); ``stop.reason`` is None
    until a signal arrives. Handlers are installed only in the main thread, and the previous
    ones are restored on exit."""

    def __init__(self, announce: bool = True):
        self.reason: str | None = None
        self.announce = announce
        self._previous: dict[int, object] = {}

    def __enter__(self) -> "StopSignals":
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)

    @property
    def terminated(self) -> bool:
        return bool(self.reason) and "SIGTERM" in self.reason

    def _handle(self, signum, frame) -> None:
        name = signal.Signals(signum).name
        if self.reason:  # a second signal: stop now
            raise KeyboardInterrupt
        self.reason = "interrupted (Ctrl-C)" if signum == signal.SIGINT else f"received {name}"
        if self.announce:
            print(f"\n{name}: finishing this step, then saving a checkpoint (a second signal quits at once; "
                  "the last complete checkpoint is kept)", file=sys.stderr, flush=True)
