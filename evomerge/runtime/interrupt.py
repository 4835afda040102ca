"""Ctrl-C during a search: stop within seconds, and never half-way through what a resume relies on.

The first Ctrl-C only records the request; the search checks it at its next step (the loop does
about once a second) and stops there. A KeyboardInterrupt raised at an arbitrary point could cut a
study write or a shutdown short, or be swallowed by a library's finalizer. Inside an
`interruptible()` section (starting Ray, opening the run: seconds to a minute, safe to cut short)
it is raised at once. A second Ctrl-C always raises at once.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from types import FrameType
from typing import Any


class StopRequest:
    def __init__(self) -> None:
        self.requested = False
        self._immediate = 0
        self._previous: Any = None
        self._installed = False

    def install(self) -> StopRequest:
        """Take over SIGINT (from the main thread only: elsewhere Ctrl-C stays Python's)."""
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGINT, self._handle)
            self._installed = True
        return self

    def restore(self) -> None:
        if self._installed:
            signal.signal(signal.SIGINT, self._previous)
            self._installed = False

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        again, self.requested = self.requested, True
        if again or self._immediate:
            raise KeyboardInterrupt

    @contextmanager
    def interruptible(self) -> Iterator[None]:
        """A section a Ctrl-C interrupts at once (sections may nest)."""
        self.check()
        self._immediate += 1
        try:
            yield
        finally:
            self._immediate -= 1

    def check(self) -> None:
        """KeyboardInterrupt once a stop was requested: raised where stopping is safe."""
        if self.requested:
            raise KeyboardInterrupt
