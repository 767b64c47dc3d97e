"""Pins: a reader's own hard links to a checkpoint's files, so it stays
readable while the writer's retention deletes it.

A reader (`tfckpt.watch`, `ServingExport` with async saves) links every file
of a committed checkpoint into its own folder `<run>/.readers/<reader>/`
before it hands the checkpoint out. The writer's retention deletes the
checkpoint's *names* on schedule; the files stay on disk, readable through
the reader's links, until the reader releases the pin. So a reader never
delays or blocks the writer, and a writer never waits for a reader.

A reader that dies leaves its folder: the files it pinned take disk space
until the next writer or reader of the directory removes it (its process is
gone, or its heartbeat is older than `STALE_SECONDS`). Where hard links
cannot be made (object stores, `ram://`, a filesystem without them, a run
directory the reader may not write to), the files are copied into a private
temporary directory instead. Either way the pinned files are checked against
the manifest (sizes, CRC-32 of the small files) before the pin counts.
"""

from __future__ import annotations

import dataclasses
import errno
import json
import os
import shutil
import socket
import stat
import tempfile
import threading
import time
import uuid
import warnings
import weakref

import tensorflow as tf

from tfckpt.store import fs
from tfckpt.store.checkpoint_store import CheckpointStore
from tfckpt.store.layout import MANIFEST, PREFIX, READERS, CheckpointRecord, os_error_text
from tfckpt.store.run_directory import RunDirectory

OWNER = "owner.json"
STALE_SECONDS = 600.0  # a reader folder with no heartbeat for that long is removed
STALE_ENV = "TFCKPT_PIN_STALE_SECONDS"
_HEARTBEAT = 60.0
# Opening a directory of the run: never through a symbolic link.
_DIR = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0)


def _stale_seconds() -> float:
    try:
        value = float(os.environ.get(STALE_ENV, STALE_SECONDS))
    except ValueError:
        return STALE_SECONDS
    return value if value > 0 else STALE_SECONDS


class Pins:
    """A reader's pins in one run directory.

    Example:

    ```python
    pins = Pins("runs/exp1")
    pinned = pins.pin(record)  # None: deleted before it could be pinned
    if pinned is not None:
        tf.train.Checkpoint(model=model).read(pinned.path).expect_partial()
        pins.release(pinned)
    pins.close()
    ```

    Args:
        directory: the run directory.
    """

    def __init__(self, directory: str):
        self.directory = directory
        self._folder: str | None = None  # <run>/.readers/<id> once made
        self._name: str | None = None  # its name in .readers
        # Open descriptors of .readers and of our folder: every write and
        # removal there goes through them, so a `.readers` swapped for a
        # symbolic link afterwards leads nowhere else.
        self._fds: list[int] = []
        self._copies: str | None = None  # private temp dir (no hard links)
        self._linkable = fs.is_local(directory)
        self._stop = threading.Event()
        self._lock = threading.Lock()  # the heartbeat against close()
        self._finalizer = weakref.finalize(self, _cleanup, self._stop, self._lock, [], [], [])
        self.problem: str | None = None  # why the last pin failed

    def _refinalize(self) -> None:
        self._finalizer.detach()
        copies = [self._copies] if self._copies else []
        owned = [self._name] if self._name else []
        self._finalizer = weakref.finalize(
            self, _cleanup, self._stop, self._lock, self._fds, owned, copies
        )

    def _own_folder(self) -> int:
        """The descriptor of this reader's folder (made on first use)."""
        if self._folder is None:
            name = f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
            name = "".join(c if c.isalnum() or c in "-_." else "_" for c in name)
            root = os.path.join(fs.local_path(self.directory), READERS)
            try:
                os.mkdir(root)
            except FileExistsError:
                pass
            try:
                # Someone else's run directory may point it anywhere: not followed.
                root_fd = os.open(root, _DIR)
            except OSError as e:
                if e.errno in (errno.ELOOP, errno.ENOTDIR):
                    raise PermissionError(f"{root} is not a directory of its own") from None
                raise
            try:
                os.mkdir(name, dir_fd=root_fd)
                folder_fd = os.open(name, _DIR, dir_fd=root_fd)
            except BaseException:
                os.close(root_fd)
                raise
            self._fds[:] = [root_fd, folder_fd]
            self._name = name
            self._folder = os.path.join(root, name)
            self._refinalize()
            _write_owner(folder_fd)
            threading.Thread(
                target=_heartbeat,
                args=(self._stop, self._lock, folder_fd),
                name="tfckpt-pin",
                daemon=True,
            ).start()
        return self._fds[1]

    def _copy_folder(self) -> str:
        if self._copies is None:
            self._copies = tempfile.mkdtemp(prefix="tfckpt-pins-")
            self._refinalize()
        return self._copies

    def pin(self, record: CheckpointRecord) -> CheckpointRecord | None:
        """`record` with its `path` in this reader's pin, or `None` when it is
        no longer there (deleted before it could be pinned) or its files do
        not match the manifest (`problem` says what). This reader's folder,
        removed meanwhile (a cleanup of `.readers`), is made again; an
        `OSError` where the checkpoint is there and cannot be pinned at all."""
        self.problem = None
        if self._linkable:
            try:
                return self._pin_here(record)
            except OSError:
                self._linkable = False  # no links here (or not ours to write): copy
        try:
            parent = os.path.join(self._copy_folder(), uuid.uuid4().hex[:8])
            return self._pin_copied(parent, record)
        except (FileNotFoundError, tf.errors.NotFoundError) as e:
            return self._missing(record, e)

    def _pin_here(self, record: CheckpointRecord) -> CheckpointRecord | None:
        """`pin` by hard links into this reader's folder of the run directory."""
        for again in (False, True):
            try:
                return self._pin_linked(self._own_folder(), uuid.uuid4().hex[:8], record)
            except FileNotFoundError as e:
                if RunDirectory(self.directory).vanished(record.name) or not self._folder_lost():
                    return self._missing(record, e)
                # Our folder is gone, not the checkpoint: a user or a script
                # removed `.readers` (or a writer took this reader for dead).
                # Pinned again in a new one; failing again, `pin` copies.
                self._forget_folder()
                if again:
                    raise
        return None  # not reached: the second try returns or raises

    def _missing(self, record: CheckpointRecord, error: BaseException) -> None:
        """`None` for a pin that found a file missing: deleted by the writer's
        retention, or (the checkpoint still there) damaged, which `problem` says."""
        if not RunDirectory(self.directory).vanished(record.name):
            name = getattr(error, "filename", None)
            self.problem = (
                f"its file {os.path.basename(name)!r} is missing"
                if isinstance(name, str) and name
                else f"a file of it is missing ({os_error_text(error)})"
            )
        return None

    def _folder_lost(self) -> bool:
        """Whether this reader's folder is no longer where it was made."""
        if self._folder is None or len(self._fds) < 2:
            return True
        try:
            here = os.stat(self._folder, follow_symlinks=False)
            ours = os.fstat(self._fds[1])
        except OSError:
            return True
        return (here.st_dev, here.st_ino) != (ours.st_dev, ours.st_ino)

    def _forget_folder(self) -> None:
        """Lets go of a folder removed under us; the next pin makes a new one."""
        with self._lock:
            self._stop.set()  # its heartbeat ends before its descriptor is closed
            for fd in self._fds:
                try:
                    os.close(fd)
                except OSError:
                    pass
            self._fds.clear()
        self._stop = threading.Event()
        self._folder = self._name = None
        self._refinalize()

    def _pin_linked(
        self, folder_fd: int, sub: str, record: CheckpointRecord
    ) -> CheckpointRecord | None:
        assert self._folder is not None
        os.mkdir(sub, dir_fd=folder_fd)
        try:
            sub_fd = os.open(sub, _DIR, dir_fd=folder_fd)
            try:
                os.mkdir(record.name, dir_fd=sub_fd)
                target_fd = os.open(record.name, _DIR, dir_fd=sub_fd)
                try:
                    self._link_files(record, target_fd)
                finally:
                    os.close(target_fd)
            finally:
                os.close(sub_fd)
            return self._checked(os.path.join(self._folder, sub), record)
        except _Rejected:
            shutil.rmtree(sub, dir_fd=folder_fd, ignore_errors=True)
            return None
        except BaseException:
            shutil.rmtree(sub, dir_fd=folder_fd, ignore_errors=True)
            raise

    def _link_files(self, record: CheckpointRecord, target_fd: int) -> None:
        checkpoint = fs.local_path(fs.join(self.directory, record.name))
        try:
            source_fd = os.open(checkpoint, _DIR)
        except OSError as e:
            if e.errno in (errno.ELOOP, errno.ENOTDIR):
                self.problem = f"{record.name} is not a directory"
                raise _Rejected from None
            raise
        try:
            for fname in [*record.manifest["files"], MANIFEST]:
                # Names come from a manifest the store checked: plain file names.
                mode = os.stat(fname, dir_fd=source_fd, follow_symlinks=False).st_mode
                if not stat.S_ISREG(mode):
                    self.problem = f"{fname} is not a regular file"
                    raise _Rejected
                os.link(
                    fname,
                    fname,
                    src_dir_fd=source_fd,
                    dst_dir_fd=target_fd,
                    follow_symlinks=False,
                )
        finally:
            os.close(source_fd)

    def _pin_copied(self, parent: str, record: CheckpointRecord) -> CheckpointRecord | None:
        target = os.path.join(parent, record.name)
        os.makedirs(target)
        try:
            for fname in [*record.manifest["files"], MANIFEST]:
                # Names come from a manifest the store checked: plain file names.
                source = fs.join(self.directory, record.name, fname)
                tf.io.gfile.copy(source, os.path.join(target, fname), overwrite=True)
            return self._checked(parent, record)
        except _Rejected:
            _remove(parent)
            return None
        except BaseException:
            _remove(parent)
            raise

    def _checked(self, parent: str, record: CheckpointRecord) -> CheckpointRecord:
        """The pinned record, once its files match the manifest; else `_Rejected`."""
        store = CheckpointStore(parent)
        pinned = next((r for r in store.scan()[0] if r.name == record.name), None)
        if pinned is None or pinned.manifest != record.manifest:
            self.problem = "its files changed while they were pinned"
            raise _Rejected
        self.problem = store.check(pinned, data=False)
        if self.problem is not None:
            raise _Rejected
        return dataclasses.replace(record, path=os.path.join(parent, record.name, PREFIX))

    def release(self, pinned: CheckpointRecord) -> None:
        """Drops the pin of `pinned` (a record `pin` returned)."""
        parent = os.path.dirname(os.path.dirname(pinned.path))
        if self._folder and os.path.dirname(parent) == self._folder:
            with self._lock:
                if not self._stop.is_set():
                    shutil.rmtree(os.path.basename(parent), dir_fd=self._fds[1], ignore_errors=True)
        elif self._copies and os.path.dirname(parent) == self._copies:
            _remove(parent)

    def close(self) -> None:
        """Drops every pin and this reader's folder."""
        self._finalizer()


class _Rejected(Exception):
    pass


def _pid_namespace() -> str | None:
    try:
        return os.readlink("/proc/self/ns/pid")
    except OSError:
        return None


def _write_owner(folder_fd: int) -> None:
    info = {
        "pid": os.getpid(),
        "host": socket.gethostname(),
        "pidns": _pid_namespace(),
        "time": time.time(),
    }
    tmp = f".{OWNER}.tmp"
    flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0)
    with open(os.open(tmp, flags, 0o644, dir_fd=folder_fd), "w") as f:
        json.dump(info, f)
    os.replace(tmp, OWNER, src_dir_fd=folder_fd, dst_dir_fd=folder_fd)


def _heartbeat(stop: threading.Event, lock: threading.Lock, folder_fd: int) -> None:
    while not stop.wait(_HEARTBEAT):
        with lock:
            if stop.is_set():
                return  # closed: the descriptor is no longer ours
            try:
                _write_owner(folder_fd)
            except OSError:
                return  # the folder is gone (removed as stale)


def _cleanup(
    stop: threading.Event, lock: threading.Lock, fds: list[int], owned: list[str], copies: list[str]
) -> None:
    with lock:
        stop.set()
        if fds:
            for name in owned:
                shutil.rmtree(name, dir_fd=fds[0], ignore_errors=True)
            for fd in fds:
                try:
                    os.close(fd)
                except OSError:
                    pass
            fds.clear()
    for folder in copies:
        _remove(folder)


def _remove(path: str) -> None:
    try:
        if os.path.islink(path) or not os.path.isdir(path):
            os.unlink(path)
        else:
            shutil.rmtree(path, ignore_errors=True)
    except OSError:
        pass


def _alive(info: object, mtime: float) -> bool:
    """Whether a reader folder's owner may still use it. Untrusted content:
    anything malformed counts as no information (the age decides)."""
    if time.time() - mtime > _stale_seconds():
        return False
    # A pid says something only on this host and in this pid namespace (a
    # container may share the host name).
    if (
        isinstance(info, dict)
        and info.get("host") == socket.gethostname()
        and info.get("pidns") == _pid_namespace()
    ):
        pid = info.get("pid")
        if isinstance(pid, int) and not isinstance(pid, bool) and pid > 0:
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                return False
            except (OSError, OverflowError, ValueError):
                return True  # not ours to signal, or no pid at all: no information
    return True


def remove_stale(directory: str) -> list[str]:
    """Removes the pin folders of readers of `directory` that are gone (their
    process ended on this host, or no heartbeat for `STALE_SECONDS`). Only
    folders owned by this user are considered, and nothing is followed out of
    `.readers`. Never raises (a warning at most); returns the names removed.
    The writer calls it when it takes the directory; each new reader too."""
    try:
        return _remove_stale(directory)
    except Exception as e:  # a reader's leftovers never make the caller fail
        warnings.warn(
            f"tfckpt: could not clean up the readers' pins in {directory!r}: "
            f"{type(e).__name__}: {e}",
            stacklevel=2,
        )
        return []


def _remove_stale(directory: str) -> list[str]:
    if not fs.is_local(directory):
        return []
    root = os.path.join(fs.local_path(directory), READERS)
    try:
        root_fd = os.open(root, _DIR)  # a symbolic link: not ours, never followed
    except OSError:
        return []
    removed = []
    try:
        with os.scandir(root_fd) as entries:
            names = [entry.name for entry in entries]
        uid = os.getuid()
        for name in names:
            try:
                st = os.stat(name, dir_fd=root_fd, follow_symlinks=False)
                if st.st_uid != uid:
                    continue  # another user's: not ours to judge
                if not stat.S_ISDIR(st.st_mode):
                    os.unlink(name, dir_fd=root_fd)  # nothing a reader makes: not followed
                    removed.append(name)
                    continue
                if not _alive(*_owner(root_fd, name, st.st_mtime)):
                    shutil.rmtree(name, dir_fd=root_fd, ignore_errors=True)
                    removed.append(name)
            except Exception:
                continue  # malformed, or changed meanwhile: no information
    finally:
        os.close(root_fd)
    return removed


def _owner(root_fd: int, name: str, folder_mtime: float) -> tuple[object, float]:
    """A reader folder's owner.json (`None` when unreadable) and heartbeat time."""
    folder_fd = os.open(name, _DIR, dir_fd=root_fd)
    try:
        try:
            st = os.stat(OWNER, dir_fd=folder_fd, follow_symlinks=False)
        except OSError:
            return None, folder_mtime  # not written yet (or removed)
        if not stat.S_ISREG(st.st_mode):
            return None, st.st_mtime
        try:
            flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0)
            with open(os.open(OWNER, flags, dir_fd=folder_fd), "rb") as f:
                return json.loads(f.read(4096)), st.st_mtime
        except Exception:
            return None, st.st_mtime  # malformed: no information, the age decides
    finally:
        os.close(folder_fd)
