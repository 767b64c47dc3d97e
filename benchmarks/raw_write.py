"""The raw reference write of the benchmarks: bytes to a new file + fsync.

Standard library only: `async_floor.py`'s writer process imports it without
TensorFlow.
"""

from __future__ import annotations

import os
from collections.abc import Iterable

# Checkpoints each benchmark option keeps: tfckpt's default retention
# (keep_last=3), so that a deletion follows each save, as in training.
KEEP = 3


def write_file(
    parts: Iterable, directory: str, i: int, keep: int, *, recycle_cache: bool = True
) -> None:
    """Writes `parts` (buffers) to `directory`/state-<i>.bin, fsyncs the file
    and the directory, and removes the file of save `i - keep`, as a
    checkpointer keeping the last `keep` does.

    `recycle_cache`: first drops the page cache of that file, as tfckpt does
    with the checkpoint it will delete (docs/performance.md, "Page cache on
    VMs"), so that the reference writes into memory just freed too."""
    old = os.path.join(directory, f"state-{i - keep}.bin")
    if recycle_cache and os.path.exists(old):
        fd = os.open(old, os.O_RDONLY)
        try:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)
    path = os.path.join(directory, f"state-{i}.bin")
    with open(path, "wb") as f:
        for part in parts:
            f.write(part)
        f.flush()
        os.fsync(f.fileno())
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
    if os.path.exists(old):
        os.remove(old)
