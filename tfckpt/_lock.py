"""One writer per run directory.

On local disks the lock is an `flock` on `<dir>/.lock`: the kernel drops it when
the holder dies, even by SIGKILL, so a crash never blocks the restart. The file
holds the holder's pid and host for the error message. Other filesystems have no
such lock; there the file itself is the lock, and one left by a dead process on
the same host is taken over.
"""

from __future__ import annotations

import json
import os
import socket
import threading
import time

import tensorflow as tf

from tfckpt import _fs
from tfckpt.errors import DirectoryLockedError

LOCK_FILE = ".lock"

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None  # type: ignore[assignment]

_guard = threading.Lock()
_held: dict[str, list] = {}  # path -> [fd or None, count]


def _holder() -> dict:
    return {"pid": os.getpid(), "host": socket.gethostname(), "since": time.time()}


def _describe(info: dict) -> str:
    since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(info.get("since", 0)))
    return f"pid {info.get('pid')} on host {info.get('host')}, since {since}"


def _read(path: str) -> dict:
    try:
        return json.loads(_fs.read_bytes(path) or b"{}")
    except (tf.errors.OpError, ValueError):
        return {}


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _locked_error(directory: str, info: dict, path: str) -> DirectoryLockedError:
    return DirectoryLockedError(
        f"Checkpoint directory {directory!r} is being written by another "
        f"process ({_describe(info)}). Two writers would interleave their "
        "checkpoints: stop that process or use another directory. If that "
        f"process is gone for good, delete {path!r}."
    )


class DirectoryLock:
    """Held while a manager may write into `directory`; re-entrant per process.

    `exclusive=True` also refuses a directory that this process already holds
    (e.g. an open `CheckpointManager`), for writers that must not interleave
    with it even in the same process.
    """

    def __init__(self, directory: str, *, exclusive: bool = False):
        self.directory = directory
        self.path = _fs.join(directory, LOCK_FILE)
        self._key = os.path.realpath(self.path) if _fs.is_local(self.path) else self.path
        self._released = False
        with _guard:
            entry = _held.get(self._key)
            if entry is not None:
                if exclusive:
                    self._released = True
                    raise DirectoryLockedError(
                        f"Checkpoint directory {directory!r} is open for writing in this "
                        f"process (pid {os.getpid()}): a CheckpointManager or a fit that "
                        "has not ended. Close it (manager.close()) first."
                    )
                entry[1] += 1
                return
            fd = self._acquire()
            _held[self._key] = [fd, 1]

    def _acquire(self) -> int | None:
        if _fs.is_local(self.path) and fcntl is not None:
            fd = os.open(_fs._local(self.path), os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                raise _locked_error(self.directory, _read(self.path), self.path) from None
            os.ftruncate(fd, 0)
            os.pwrite(fd, json.dumps(_holder()).encode(), 0)
            return fd
        if tf.io.gfile.exists(self.path):
            info = _read(self.path)
            dead_here = info.get("host") == socket.gethostname() and not _pid_alive(
                int(info.get("pid") or 0)
            )
            if info.get("pid") and not dead_here:  # an unreadable lock is stale
                raise _locked_error(self.directory, info, self.path)
        with tf.io.gfile.GFile(self.path, "wb") as f:
            f.write(json.dumps(_holder()).encode())
        return None

    def release(self) -> None:
        if self._released:
            return
        self._released = True
        with _guard:
            entry = _held.get(self._key)
            if entry is None:
                return
            entry[1] -= 1
            if entry[1] > 0:
                return
            del _held[self._key]
            fd = entry[0]
            if fd is not None:
                os.close(fd)  # closing drops the flock; the file stays harmlessly
            else:
                try:
                    tf.io.gfile.remove(self.path)
                except tf.errors.OpError:
                    pass
