"""One writer per run directory.

On local disks the lock is an `flock` on `<dir>/.lock`: the kernel drops it when
the holder dies, even by SIGKILL, so a crash never blocks the restart. The file
holds the holder's pid and host for the error message.

Other filesystems (object stores, `ram://`) have no such lock; there `.lock` is
a lease (`Lease`): the holder's id, pid and host, and an expiry time that a
daemon thread of the holder renews every third of the lease (`LEASE_SECONDS`,
60 s by default). A lease that was not renewed in time is stale, whatever its
pid and host say (pids say nothing across hosts or containers), so a writer
killed hard anywhere blocks the restart for at most one lease. Two writers
that both find the directory free both write their lease, wait
`SETTLE_SECONDS`, and read it back: only the one whose lease is there goes on.
Expiry times are wall-clock times: the hosts' clocks must agree to well
within a lease.
"""

from __future__ import annotations

import gc
import json
import os
import socket
import threading
import time
import uuid
import warnings

import tensorflow as tf

from tfckpt.errors import CheckpointWriteError, DirectoryLockedError
from tfckpt.store import fs
from tfckpt.store.layout import LOCK

# The lease on storage without flock. The environment variables override them
# (read when a lock is taken), e.g. a short lease for tests.
LEASE_SECONDS = 60.0
SETTLE_SECONDS = 1.0
LEASE_ENV = "TFCKPT_LOCK_LEASE_SECONDS"
SETTLE_ENV = "TFCKPT_LOCK_SETTLE_SECONDS"

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None  # type: ignore[assignment]

# Re-entrant: a dropped manager's finalizer may release a lock (GC) in a thread
# that is taking another one.
_guard = threading.RLock()
_held: dict[str, list] = {}  # path -> [fd or Lease, count, who holds it]


def _holder() -> dict:
    return {"pid": os.getpid(), "host": socket.gethostname(), "since": time.time()}


def _describe(info: dict) -> str:
    since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(info.get("since", 0)))
    return f"pid {info.get('pid')} on host {info.get('host')}, since {since}"


def _read(path: str, *, strict: bool = False) -> dict:
    """The lock file's content; `{}` when there is none (or it is garbled).
    `strict`: an I/O error is raised, not taken for "no lock"."""
    try:
        info = fs.parse_json(fs.read_bytes(path, 65536) or b"{}")
        return info if isinstance(info, dict) else {}
    except tf.errors.NotFoundError:
        return {}
    except tf.errors.OpError:
        if strict:
            raise
        return {}
    except ValueError:
        return {}


def _locked_error(directory: str, info: dict, path: str) -> DirectoryLockedError:
    return DirectoryLockedError(
        f"Checkpoint directory {directory!r} is being written by another "
        f"process ({_describe(info)}). Two writers would interleave their "
        "checkpoints: stop that process or use another directory. If that "
        f"process is gone for good, delete {path!r}."
    )


def _seconds(env: str, default: float) -> float:
    text = os.environ.get(env)
    if text is None:
        return default
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not 0 < value < float("inf"):
        raise ValueError(
            f"The environment variable {env} must be a positive number of seconds. "
            f"Received: {env}={text!r}"
        )
    return value


def _number(value: object) -> float | None:
    try:
        number = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None
    return number if number == number else None


def _lease_error(directory: str, info: dict, path: str, lease: float) -> DirectoryLockedError:
    return DirectoryLockedError(
        f"Checkpoint directory {directory!r} is being written by another "
        f"process ({_describe(info)}), which renews its lease on it. Two writers "
        "would interleave their checkpoints: stop that process or use another "
        "directory. A writer that died keeps the directory for at most one lease "
        f"({lease:g} s) after its last renewal; {path!r} then counts as stale."
    )


def _renewal(info: dict) -> tuple:
    return info.get("token"), info.get("expires")


class Lease:
    """The writer lock on storage without `flock` (object stores, `ram://`):
    a lease in `<directory>/.lock` that a daemon thread renews while the holder lives.

    `acquire` waits while a lease that is not renewed runs out (at most one
    lease), and raises `DirectoryLockedError` as soon as a renewal shows that
    its holder is alive.
    """

    def __init__(self, directory: str):
        self.directory = directory
        self.path = fs.join(directory, LOCK)
        self.duration = _seconds(LEASE_ENV, LEASE_SECONDS)
        self.settle = _seconds(SETTLE_ENV, SETTLE_SECONDS)
        self.token = uuid.uuid4().hex
        self.lost: str | None = None  # why another writer holds it now
        self._since = time.time()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _write(self) -> None:
        info = {
            **_holder(),
            "since": self._since,
            "token": self.token,
            "lease": self.duration,
            "expires": time.time() + self.duration,
        }
        # Replaced whole by a rename: readers never see a partial lease (and
        # ram:// appends to a file that is opened for writing again).
        tmp = f"{self.path}.{self.token}.tmp"
        with tf.io.gfile.GFile(tmp, "wb") as f:
            f.write(json.dumps(info).encode())
        tf.io.gfile.rename(tmp, self.path, overwrite=True)

    def _expired(self, info: dict) -> bool:
        expires = _number(info.get("expires"))
        if "expires" not in info:
            # Written by an older tfckpt (no lease): it counts from when it was taken.
            since = _number(info.get("since"))
            expires = None if since is None else since + self.duration
        return expires is None or expires < time.time()

    def acquire(self) -> None:
        self._wait_until_free()
        self._since = time.time()
        self._write()
        # A writer that found the directory free too writes its lease about
        # now: the last write wins, and each one reads back which it was.
        time.sleep(self.settle)
        info = _read(self.path, strict=True)
        if info.get("token") != self.token:
            raise _lease_error(self.directory, info, self.path, self.duration)
        self._thread = threading.Thread(target=self._renew, name="tfckpt-lease", daemon=True)
        self._thread.start()

    def _wait_until_free(self) -> None:
        first = _read(self.path, strict=True)  # an unreadable lease is not a free one
        if not first or self._expired(first):
            return  # none, unreadable (a lock being written is read back later) or stale
        lease = _number(first.get("lease")) or self.duration
        # Clocks that disagree: a lease unchanged for a whole lease is stale too.
        deadline = time.monotonic() + lease
        while True:
            time.sleep(min(1.0, lease / 10))
            info = _read(self.path, strict=True)
            if not info:
                return  # released
            if _renewal(info) != _renewal(first):
                raise _lease_error(self.directory, info, self.path, lease)  # renewed: alive
            if self._expired(info) or time.monotonic() > deadline:
                return

    def _renew(self) -> None:
        while not self._stop.wait(self.duration / 3):
            try:
                info = _read(self.path, strict=True)
                if info.get("token") != self.token:
                    holder = _describe(info) if info else "nobody: the lock file is gone"
                    self.lost = f"the lease on {self.directory!r} is held by {holder}"
                    warnings.warn(
                        f"tfckpt: this process (pid {os.getpid()}) lost the writer lease on "
                        f"{self.directory!r}: it is held by {holder}. Its renewals did not "
                        f"reach the storage for longer than the lease ({self.duration:g} s), "
                        "so another writer may now write into the directory; stop one of them.",
                        stacklevel=1,
                    )
                    return
                self._write()
            except tf.errors.OpError:
                continue  # a storage hiccup: the next renewal tries again

    def stop_renewing(self) -> None:
        """Stops the renewals and leaves the lease file (as a hard kill does)."""
        self._stop.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join()

    def release(self) -> None:
        self.stop_renewing()
        if self.lost is None and _read(self.path).get("token") == self.token:
            try:
                tf.io.gfile.remove(self.path)
            except tf.errors.OpError:
                pass  # it expires


class DirectoryLock:
    """Held while a manager may write into `directory`; re-entrant per process.

    `exclusive=True` also refuses a directory that this process already holds
    (e.g. an open `CheckpointManager`), for writers that must not interleave
    with it even in the same process.
    """

    def __init__(self, directory: str, *, exclusive: bool = False, owner: str = ""):
        self.directory = directory
        self.path = fs.join(directory, LOCK)
        self._key = os.path.realpath(self.path) if fs.is_local(self.path) else self.path
        self._released = False
        if exclusive and self._key in _held:
            # A holder nobody can reach any more (a manager dropped without
            # close(), in a reference cycle) lets go in its finalizer.
            gc.collect()
        with _guard:
            entry = _held.get(self._key)
            if entry is not None:
                if exclusive:
                    self._released = True
                    holder = entry[2] or "a CheckpointManager or a fit that has not ended"
                    raise DirectoryLockedError(
                        f"Checkpoint directory {directory!r} is open for writing in this "
                        f"process (pid {os.getpid()}) by {holder}. Two writers would "
                        "interleave their checkpoints: close that one first "
                        "(manager.close(), or let its fit end), or write elsewhere."
                    )
                entry[1] += 1
                return
            fd = self._acquire()
            _held[self._key] = [fd, 1, owner]

    def _acquire(self) -> int | Lease:
        if fs.is_local(self.path) and fcntl is not None:
            # Never through a link or into a special file: the run directory
            # may be someone else's (a `.lock` linked to a file outside it).
            try:
                fd, _ = fs.open_regular(self.path, os.O_RDWR | os.O_CREAT)
            except (OSError, fs.NotRegularFile) as e:
                reason = f"it is {e.what}" if isinstance(e, fs.NotRegularFile) else e.strerror
                raise CheckpointWriteError(
                    f"Cannot take the lock {self.path!r} of the run directory: {reason}. "
                    "Nothing was written. Remove it if no tfckpt process of yours made it."
                ) from e
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                raise _locked_error(self.directory, _read(self.path), self.path) from None
            except BaseException:
                os.close(fd)
                raise
            try:
                # Who holds it, for the error message of another writer only:
                # the flock is the lock, so a failed write does not matter. Not
                # into a file with other names (hard-linked from elsewhere).
                if os.fstat(fd).st_nlink == 1:
                    os.ftruncate(fd, 0)
                    os.pwrite(fd, json.dumps(_holder()).encode(), 0)
            except OSError:
                pass
            return fd
        lease = Lease(self.directory)
        lease.acquire()
        return lease

    @property
    def lost(self) -> str | None:
        """Why another writer holds the directory now (its lease was taken over
        after this process's renewals failed), or `None`; always `None` on
        local disks."""
        entry = _held.get(self._key)
        return entry[0].lost if entry is not None and isinstance(entry[0], Lease) else None

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
            held = entry[0]
            if isinstance(held, Lease):
                held.release()
            else:
                try:
                    os.close(held)  # closing drops the flock; the file stays harmlessly
                except OSError:
                    pass  # Linux frees the descriptor (and the flock) even then
