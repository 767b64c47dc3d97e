"""The raw reference write of the benchmarks: bytes to a new file + fsync.

Standard library only: `async_floor.py`'s writer process imports it without
TensorFlow.
"""

from __future__ import annotations

import os
from collections.abc import Iterable


def write_file(parts: Iterable, directory: str, i: int, keep: int) -> None:
    """Writes `parts` (buffers) to `directory`/state-<i>.bin, fsyncs the file
    and the directory, and removes the file of save `i - keep`, as a
    checkpointer keeping the last `keep` does."""
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
    old = os.path.join(directory, f"state-{i - keep}.bin")
    if os.path.exists(old):
        os.remove(old)
