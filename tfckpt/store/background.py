"""Background threads of a save yield the CPU to training."""

from __future__ import annotations

import contextlib
import os
import sys
import threading
from collections.abc import Iterator

# The nice value of tfckpt's background threads (TF's async writer, the
# commit thread, the remover of deleted checkpoints): on a machine whose cores
# all train, they run in the gaps instead of taking turns with training.
BACKGROUND_NICE = 10
_foreground = threading.local()


@contextlib.contextmanager
def in_foreground() -> Iterator[None]:
    """Marks the calling thread as one that trains for the block: nothing in
    it lowers its priority (TF writes an async checkpoint in the caller's
    thread in some cases, e.g. in a preemption save)."""
    _foreground.active = True
    try:
        yield
    finally:
        _foreground.active = False


def lower_thread_priority() -> None:
    """Raises the calling thread's nice value to `BACKGROUND_NICE` (Linux
    schedules threads one by one); elsewhere, or when not allowed, nothing."""
    if sys.platform != "linux" or getattr(_foreground, "active", False):
        return
    tid = threading.get_native_id()
    try:
        if os.getpriority(os.PRIO_PROCESS, tid) < BACKGROUND_NICE:
            os.setpriority(os.PRIO_PROCESS, tid, BACKGROUND_NICE)
    except OSError:
        pass
