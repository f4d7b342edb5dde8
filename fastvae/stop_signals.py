"""SIGINT/SIGTERM during training: finish the step, checkpoint, stop (a second signal stops at once).

>>> with StopRequests() as stop:
...     while not stop.requested:
...         ...   # the trainer checks ``stop.requested`` at its logging steps
"""

from __future__ import annotations

import signal
import threading
from typing import Any


class StopRequests:
    """Turns SIGINT/SIGTERM into a request the loop honours at its next logging step (after
    writing a checkpoint), instead of dying mid-step. A second signal interrupts at once."""

    def __init__(self) -> None:
        self.requested = False
        self.signal_name = ""
        self._previous: dict[int, Any] = {}

    def _handle(self, signum: int, frame) -> None:
        if self.requested:
            raise KeyboardInterrupt(f"second {signal.Signals(signum).name}: stopping without a checkpoint")
        self.requested, self.signal_name = True, signal.Signals(signum).name

    def __enter__(self) -> "StopRequests":
        if threading.current_thread() is threading.main_thread():
            for signum in (signal.SIGINT, signal.SIGTERM):
                self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
