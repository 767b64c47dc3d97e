"""The "training finished" marker of a run directory, for watchers.

The writer puts `.finished` into the run directory when `fit` (or a
`CheckpointManager`'s `close()`) ends normally, and removes it when it takes
the directory: a crash leaves no marker (a restarted run is followed on), and
a new `fit` in the same directory un-finishes it. `tfckpt.watch` ends once it
sees the marker and has yielded every checkpoint committed before it.
"""

from __future__ import annotations

import json
import os
import socket
import time
import warnings
from collections.abc import Callable

import tensorflow as tf

from tfckpt.store import fs
from tfckpt.store.layout import FINISHED as MARKER


def mark_finished(directory: str) -> None:
    """Records that training into `directory` ended normally. Only the writer
    (the lock holder) calls it; a failure is a warning, never an error."""
    info = {"pid": os.getpid(), "host": socket.gethostname(), "time": time.time()}

    def write() -> None:
        fs.write_new_file(fs.join(directory, MARKER), json.dumps(info).encode())

    _or_warn(write, f"could not mark {directory!r} as finished", "ends by its timeout instead")


def clear_finished(directory: str) -> None:
    """Removes the marker: a writer took `directory` and training goes on. A
    failure is a warning (a watcher may then stop early), never an error."""
    path = fs.join(directory, MARKER)

    def remove() -> None:
        # The entry itself, whatever it is (a link is removed, not followed):
        # `exists` would answer False for a dangling link and leave it.
        if fs.entry_kind(path) is not None:
            if fs.is_local(path):
                os.unlink(fs.local_path(path))
            else:
                tf.io.gfile.remove(path)

    _or_warn(remove, f"could not remove {path!r}", "started now may take the run as finished")


def _or_warn(action: Callable[[], None], what: str, consequence: str) -> None:
    try:
        action()
    except (OSError, ValueError, tf.errors.OpError) as e:
        warnings.warn(f"tfckpt: {what} ({e}); a tfckpt.watch on it {consequence}.", stacklevel=3)


def is_finished(directory: str) -> bool:
    """Whether the writer of `directory` recorded a normal end (and no writer
    took the directory since). `False` when that cannot be told."""
    try:
        return fs.entry_kind(fs.join(directory, MARKER)) == "file"
    except tf.errors.OpError:
        return False
