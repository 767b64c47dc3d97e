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
import json
import os
import shutil
import socket
import stat
import tempfile
import threading
import time
import uuid
import weakref

import tensorflow as tf

from tfckpt import _fs
from tfckpt.layout import MANIFEST, PREFIX, READERS
from tfckpt.store import CheckpointRecord, CheckpointStore

OWNER = "owner.json"
STALE_SECONDS = 600.0  # a reader folder with no heartbeat for that long is removed
STALE_ENV = "TFCKPT_PIN_STALE_SECONDS"
_HEARTBEAT = 60.0


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
        self._copies: str | None = None  # private temp dir (no hard links)
        self._linkable = _fs.is_local(directory)
        self._stop = threading.Event()
        self._finalizer = weakref.finalize(self, _cleanup, self._stop, [])
        self.problem: str | None = None  # why the last pin failed

    def _own_folder(self) -> str:
        if self._folder is None:
            name = f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
            name = "".join(c if c.isalnum() or c in "-_." else "_" for c in name)
            root = os.path.join(_fs.local_path(self.directory), READERS)
            if os.path.islink(root):
                # Someone else's run directory may point it anywhere: not followed.
                raise PermissionError(f"{root} is a symbolic link")
            folder = os.path.join(root, name)
            os.makedirs(folder)
            _write_owner(folder)
            self._folder = folder
            self._finalizer.detach()
            self._finalizer = weakref.finalize(self, _cleanup, self._stop, [folder])
            threading.Thread(
                target=_heartbeat, args=(self._stop, folder), name="tfckpt-pin", daemon=True
            ).start()
        return self._folder

    def _copy_folder(self) -> str:
        if self._copies is None:
            self._copies = tempfile.mkdtemp(prefix="tfckpt-pins-")
            self._finalizer.detach()
            folders = [f for f in (self._folder, self._copies) if f]
            self._finalizer = weakref.finalize(self, _cleanup, self._stop, folders)
        return self._copies

    def pin(self, record: CheckpointRecord) -> CheckpointRecord | None:
        """`record` with its `path` in this reader's pin, or `None` when it is
        no longer there (deleted before it could be pinned) or its files do
        not match the manifest (`problem` says what)."""
        self.problem = None
        if self._linkable:
            try:
                parent = os.path.join(self._own_folder(), uuid.uuid4().hex[:8])
                return self._pin_in(parent, record, link=True)
            except FileNotFoundError:
                return None  # deleted meanwhile
            except OSError:
                self._linkable = False  # no links here (or not ours to write): copy
        try:
            parent = os.path.join(self._copy_folder(), uuid.uuid4().hex[:8])
            return self._pin_in(parent, record, link=False)
        except (FileNotFoundError, tf.errors.NotFoundError):
            return None

    def _pin_in(
        self, parent: str, record: CheckpointRecord, *, link: bool
    ) -> CheckpointRecord | None:
        target = os.path.join(parent, record.name)
        os.makedirs(target)
        try:
            for fname in [*record.manifest["files"], MANIFEST]:
                # Names come from a manifest the store checked: plain file names.
                source = _fs.join(self.directory, record.name, fname)
                if link:
                    if not stat.S_ISREG(os.lstat(_fs.local_path(source)).st_mode):
                        self.problem = f"{fname} is not a regular file"
                        raise _Rejected
                    os.link(_fs.local_path(source), os.path.join(target, fname))
                else:
                    tf.io.gfile.copy(source, os.path.join(target, fname), overwrite=True)
            store = CheckpointStore(parent)
            pinned = next((r for r in store.scan()[0] if r.name == record.name), None)
            if pinned is None or pinned.manifest != record.manifest:
                self.problem = "its files changed while they were pinned"
                raise _Rejected
            self.problem = store.check(pinned, data=False)
            if self.problem is not None:
                raise _Rejected
        except _Rejected:
            _remove(parent)
            return None
        except BaseException:
            _remove(parent)
            raise
        return dataclasses.replace(record, path=os.path.join(target, PREFIX))

    def release(self, pinned: CheckpointRecord) -> None:
        """Drops the pin of `pinned` (a record `pin` returned)."""
        parent = os.path.dirname(os.path.dirname(pinned.path))
        for folder in (self._folder, self._copies):
            if folder and os.path.dirname(parent) == folder:
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


def _write_owner(folder: str) -> None:
    info = {
        "pid": os.getpid(),
        "host": socket.gethostname(),
        "pidns": _pid_namespace(),
        "time": time.time(),
    }
    tmp = os.path.join(folder, f".{OWNER}.tmp")
    with open(tmp, "w") as f:
        json.dump(info, f)
    os.replace(tmp, os.path.join(folder, OWNER))


def _heartbeat(stop: threading.Event, folder: str) -> None:
    while not stop.wait(_HEARTBEAT):
        try:
            _write_owner(folder)
        except OSError:
            return  # the folder is gone (removed as stale, or closed)


def _cleanup(stop: threading.Event, folders: list[str]) -> None:
    stop.set()
    for folder in folders:
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
            except OSError:
                return True
    return True


def remove_stale(directory: str) -> list[str]:
    """Removes the pin folders of readers of `directory` that are gone (their
    process ended on this host, or no heartbeat for `STALE_SECONDS`). Never
    raises; returns the names removed. The writer calls it when it takes the
    directory; each new reader too."""
    if not _fs.is_local(directory):
        return []
    root = os.path.join(_fs.local_path(directory), READERS)
    removed = []
    if os.path.islink(root):
        return []  # not ours: never followed
    try:
        names = os.listdir(root)
    except OSError:
        return []
    for name in names:
        path = os.path.join(root, name)
        try:
            if os.path.islink(path) or not os.path.isdir(path):
                os.unlink(path)  # nothing a reader makes: not followed
                removed.append(name)
                continue
            owner = os.path.join(path, OWNER)
            try:
                mtime = os.lstat(owner).st_mtime
            except OSError:
                mtime = os.lstat(path).st_mtime  # not written yet (or removed)
            try:
                with open(owner) as f:
                    info = json.loads(f.read(4096))
            except (OSError, ValueError):
                info = None
            if not _alive(info, mtime):
                shutil.rmtree(path, ignore_errors=True)
                removed.append(name)
        except OSError:
            continue
    return removed
