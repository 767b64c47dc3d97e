"""Background threads of a save yield the CPU to training."""

from __future__ import annotations

import os
import sys
import threading

# The nice value of tfckpt's background threads (TF's async writer, the
# commit thread, the remover of deleted checkpoints): on a machine whose cores
# all train, they run in the gaps instead of taking turns with training.
BACKGROUND_NICE = 10


def lower_thread_priority() -> None:
    """Raises the calling thread's nice value to `BACKGROUND_NICE` (Linux
    schedules threads one by one); elsewhere, or when not allowed, nothing."""
    if sys.platform != "linux":
        return
    tid = threading.get_native_id()
    try:
        if os.getpriority(os.PRIO_PROCESS, tid) < BACKGROUND_NICE:
            os.setpriority(os.PRIO_PROCESS, tid, BACKGROUND_NICE)
    except OSError:
        pass
