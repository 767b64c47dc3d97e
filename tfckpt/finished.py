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

import tensorflow as tf

from tfckpt import _fs
from tfckpt.layout import FINISHED as MARKER


def mark_finished(directory: str) -> None:
    """Records that training into `directory` ended normally. Only the writer
    (the lock holder) calls it; a failure is a warning, never an error."""
    info = {"pid": os.getpid(), "host": socket.gethostname(), "time": time.time()}
    try:
        with tf.io.gfile.GFile(_fs.join(directory, MARKER), "wb") as f:
            f.write(json.dumps(info).encode())
    except (OSError, tf.errors.OpError) as e:
        warnings.warn(
            f"tfckpt: could not mark {directory!r} as finished ({e}); a tfckpt.watch "
            "on it ends by its timeout instead.",
            stacklevel=2,
        )


def clear_finished(directory: str) -> None:
    """Removes the marker: a writer took `directory` and training goes on. A
    failure is a warning (a watcher may then stop early), never an error."""
    path = _fs.join(directory, MARKER)
    try:
        if tf.io.gfile.exists(path):
            tf.io.gfile.remove(path)
    except (OSError, tf.errors.OpError) as e:
        warnings.warn(
            f"tfckpt: could not remove {path!r} ({e}); a tfckpt.watch started now may "
            "take the run as finished.",
            stacklevel=2,
        )


def is_finished(directory: str) -> bool:
    """Whether the writer of `directory` recorded a normal end (and no writer
    took the directory since). `False` when that cannot be told."""
    try:
        return tf.io.gfile.exists(_fs.join(directory, MARKER))
    except tf.errors.OpError:
        return False
