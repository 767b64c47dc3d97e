"""Python's cyclic garbage collector held off while a save runs.

A save makes a few short-lived Python objects per variable (TF's save specs,
tensors and names). With thousands of variables they are enough to start a
full collection of the whole process's heap every other save: 0.9-1.2 s at
6,002 variables and 1.1 million live objects on a 2-core VM, holding the GIL,
so training stops too even when an async save's thread runs it. Reference
counting frees those objects when the save ends, so held off until then they
never reach an older generation and never start a full collection.

The collector is process-wide. A collector the program turned off before a
hold stays off; one it turns off *during* a hold is turned on again when the
last hold ends (no hold can see that call). A forked child starts with the
collector as the program had it, whatever holds the parent had.
"""

from __future__ import annotations

import contextlib
import gc
import os
import threading
from collections.abc import Iterator

_lock = threading.Lock()
_holds = 0
_disabled_here = False  # whether the first hold turned the collector off


class Hold:
    """One hold on the collector; `release()` ends it, once, from any thread.
    With `timeout` (seconds), it also ends by itself then: an async write on
    slow storage does not keep the collector off for all of its I/O."""

    def __init__(self, timeout: float | None = None):
        self._released = False
        self._guard = threading.Lock()
        self._timer: threading.Timer | None = None
        _acquire()
        if timeout is not None:
            self._timer = threading.Timer(timeout, self.release)
            self._timer.daemon = True
            self._timer.start()

    def release(self) -> None:
        with self._guard:
            if self._released:
                return
            self._released = True
        if self._timer is not None:
            self._timer.cancel()
        _release()


def _acquire() -> None:
    global _holds, _disabled_here
    with _lock:
        if _holds == 0:
            _disabled_here = gc.isenabled()
            if _disabled_here:
                gc.disable()
        _holds += 1


def _release() -> None:
    global _holds, _disabled_here
    with _lock:
        if _holds == 0:
            return
        _holds -= 1
        if _holds == 0 and _disabled_here:
            _disabled_here = False
            gc.enable()


def hold(timeout: float | None = None) -> Hold:
    """Holds off automatic collection until the returned `Hold` is released
    (or `timeout` seconds pass); holds nest, across threads."""
    return Hold(timeout)


@contextlib.contextmanager
def paused() -> Iterator[None]:
    """A hold for the block."""
    held = hold()
    try:
        yield
    finally:
        held.release()


def _after_fork_in_child() -> None:
    # The parent's holds belong to threads the child does not have.
    global _lock, _holds, _disabled_here
    _lock = threading.Lock()
    if _holds and _disabled_here:
        gc.enable()
    _holds, _disabled_here = 0, False


os.register_at_fork(after_in_child=_after_fork_in_child)
