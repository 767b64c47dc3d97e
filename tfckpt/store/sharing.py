"""Incremental checkpoints: a data shard equal to one of the checkpoint
before the newest is hard-linked to it instead of kept as another copy.

Which files are equal is decided by their bytes (size and xxh3-128 hash), at
commit, before the commit rename; so every checkpoint stays a complete TF
checkpoint, and deleting one never affects another.

Two rules bound what one rotten file can cost. The file linked to is read
back and hashed first: a byte that rotted on disk since its commit is never
linked into a new checkpoint. And a save never links to a file the newest
checkpoint uses, only to the one before it: the checkpoints alternate between
two physical copies of an unchanged file, so the two newest never share one,
and a rotten file costs every other checkpoint at most, never the whole run.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import errno
import os
import stat
import threading
import warnings
from collections.abc import Callable, Mapping
from typing import Any

import tensorflow as tf

from tfckpt.errors import CheckpointReadError
from tfckpt.store import fs
from tfckpt.store.background import lower_thread_priority
from tfckpt.store.layout import CHECKPOINT_NAME, DAMAGED, SHARD, CheckpointRecord
from tfckpt.store.run_directory import RunDirectory

# Read back and hash the file linked to before linking it (see the module's
# docstring). Only the benchmark turns it off, to measure what it costs.
CHECK_BEFORE_LINKING = True
_SEAL_THREADS = 4  # files hashed, linked or fsynced at once by a commit
# errnos of a filesystem without hard links (or across devices)
_NO_LINKS = {errno.EPERM, errno.EXDEV, errno.ENOTSUP, errno.EOPNOTSUPP}


class FileSharing:
    """Makes the files of a checkpoint being committed durable, sharing what
    it can with the committed checkpoint before the newest.

    Args:
        directory: the run directory.
        share_files: link equal data shards (local disks only); turned off
            for good when the filesystem has no hard links.
        fsync_file: how a file that is not linked is made durable.
        background: the threads yield the CPU to training (async saves).
    """

    def __init__(
        self,
        directory: str,
        *,
        share_files: bool,
        fsync_file: Callable[[str], None],
        background: bool,
    ):
        self.directory = directory
        self.share_files = share_files and fs.is_local(directory)
        self._link_lock = threading.Lock()
        self._fsync_file = fsync_file
        self._background = background
        # Its own reader, not the store: a store it referred back to would
        # live (and keep this pool's threads) until the cyclic GC ran.
        self._reader = RunDirectory(directory)
        # The two newest committed checkpoints, oldest first: files are shared
        # with the first, never with the second (see the module's docstring).
        self._newest: list[CheckpointRecord] = []
        self._newest_known = False
        self._sealer: concurrent.futures.ThreadPoolExecutor | None = None

    def _path(self, *names: str) -> str:
        return fs.join(self.directory, *names)

    def committed(self, record: CheckpointRecord | None) -> None:
        """`record` is now the newest checkpoint (`None`: not known; scan)."""
        if record is None or not self._newest_known:
            self._newest, self._newest_known = [], False
        else:
            self._newest = [*self._newest, record][-2:]

    def deleted(self, name: str) -> None:
        if any(record.name == name for record in self._newest):
            self._newest, self._newest_known = [], False

    def close(self) -> None:
        if self._sealer is not None:
            self._sealer.shutdown(wait=True)
            self._sealer = None

    def _file_entry(self, path: str) -> dict[str, Any]:
        if not SHARD.match(os.path.basename(path)):
            return {"size": fs.size(path), "crc32": fs.crc32(path)}
        # TF's per-tensor CRC32C covers a data shard; the hash is what a later
        # save compares its own shard with, to share the file.
        if self.share_files:
            return {"size": fs.size(path), "xxh3": fs.content_hash(path)}
        return {"size": fs.size(path)}

    def seal(self, tmp: str, files: list[str]) -> dict[str, dict[str, Any]]:
        """The manifest entries of `files` in `tmp`, each file made durable:
        hard-linked to an equal file of the newest checkpoint (see
        `share_files`), or fsynced. Files are handled in parallel threads: one
        file's fsync waits for the disk while another is hashed, and the
        filesystem can commit several fsyncs at once."""
        sources = self._share_sources() if self.share_files else None
        if self._sealer is None:
            self._sealer = concurrent.futures.ThreadPoolExecutor(
                max_workers=_SEAL_THREADS,
                thread_name_prefix="tfckpt-seal",
                initializer=lower_thread_priority if self._background else None,
            )
        futures = {f: self._sealer.submit(self._seal_one, tmp, f, sources) for f in files}
        try:
            concurrent.futures.wait(futures.values())
        finally:
            # Also on Ctrl-C: no worker may still write into tmp when `guard`
            # removes it.
            for future in futures.values():
                future.cancel()
            concurrent.futures.wait(futures.values())
        return {f: future.result() for f, future in futures.items()}

    def _seal_one(self, tmp: str, fname: str, sources: _Sources | None) -> dict[str, Any]:
        path = fs.join(tmp, fname)
        entry = self._file_entry(path)
        if sources is not None and "xxh3" in entry and self._link_to(sources, entry, path):
            return entry  # synced when it was first committed
        self._fsync_file(path)
        if "xxh3" in entry:
            # What a later save checks before it links to this file: a file
            # changed in place since has another modification time.
            entry["mtime_ns"] = os.stat(fs.local_path(path)).st_mtime_ns
        return entry

    def _link_to(self, sources: _Sources, entry: dict[str, Any], path: str) -> bool:
        """Replaces the data shard at `path` by a hard link to an equal file
        (same size and hash) of the checkpoint before the newest, when that
        file is still as it was committed and the newest does not use it."""
        found = sources.files.get((entry["size"], entry["xxh3"]))
        if found is None or not self.share_files:
            return False
        name, earlier = found
        source = self._path(sources.record.name, name)
        # The run directory may come from someone else: link only our own
        # regular files, unchanged since their commit and not found damaged.
        try:
            st = os.lstat(fs.local_path(source))
        except OSError:
            return False
        if (
            not stat.S_ISREG(st.st_mode)
            or st.st_uid != os.geteuid()
            or st.st_size != entry["size"]
            or st.st_mtime_ns != earlier.get("mtime_ns")
            or (st.st_dev, st.st_ino) in sources.damaged
            or (st.st_dev, st.st_ino) in sources.newest_files
        ):
            return False
        # The bytes on disk, not only the manifest: a byte that rotted in
        # place (mtime unchanged, as media errors do) must not be linked into
        # this checkpoint and every later one. One read of the source file.
        try:
            if CHECK_BEFORE_LINKING and fs.content_hash(source) != entry["xxh3"]:
                sources.damaged.add((st.st_dev, st.st_ino))
                return False
        except OSError:
            return False
        # One link at a time (the hashing above runs in parallel): the first
        # that finds the filesystem without links turns sharing off for all.
        with self._link_lock:
            if not self.share_files:
                return False
            try:
                fs.replace_with_link(source, path)
            except OSError as e:
                # The copy just written is complete: a link that cannot be made
                # (source deleted meanwhile, too many links, an I/O error) only
                # costs the disk space sharing would have saved.
                if e.errno in _NO_LINKS:
                    self.share_files = False
                    warnings.warn(
                        f"tfckpt: the filesystem of {self.directory!r} has no hard links "
                        f"({os.strerror(e.errno)}): saving full checkpoints, with no "
                        "files shared between them.",
                        stacklevel=2,
                    )
                return False
        entry["shared"] = sources.record.name
        entry["mtime_ns"] = st.st_mtime_ns
        return True

    def _share_sources(self) -> _Sources | None:
        """What this save may link to: the data shards, by (size, hash), of
        the checkpoint before the newest, unless its directory is not a real
        directory; the files the newest uses and the files of checkpoints
        found damaged are never linked."""
        try:
            records = self._share_source()
            if records is None:
                return None
            source, newest = records
            if not all(self._is_directory(r.name) for r in records):
                return None  # a symlink in someone else's run directory
            newest_files = self._inodes(newest.name)
            damaged = set()
            for entry in self._reader.entries():
                if entry.startswith(DAMAGED) and CHECKPOINT_NAME.match(entry[len(DAMAGED) :]):
                    damaged |= self._inodes(entry[len(DAMAGED) :])
        except (CheckpointReadError, tf.errors.OpError, OSError):
            return None  # cannot tell what to share with: keep every copy
        files = {
            (e["size"], e["xxh3"]): (fname, e)
            for fname, e in source.manifest["files"].items()
            if "xxh3" in e and SHARD.match(fname)
        }
        return _Sources(source, files, damaged, newest_files)

    def _is_directory(self, name: str) -> bool:
        return stat.S_ISDIR(os.lstat(fs.local_path(self._path(name))).st_mode)

    def _inodes(self, name: str) -> set[tuple[int, int]]:
        """(st_dev, st_ino) of the entries of a checkpoint's directory."""
        directory = fs.local_path(self._path(name))
        if not os.path.isdir(directory) or os.path.islink(directory):
            return set()
        found = set()
        for fname in os.listdir(directory):
            st = os.lstat(os.path.join(directory, fname))
            found.add((st.st_dev, st.st_ino))
        return found

    def _share_source(self) -> tuple[CheckpointRecord, CheckpointRecord] | None:
        """The checkpoint before the newest, and the newest; `None` when
        there are not two, or one was found damaged since."""
        if not self._newest_known:
            records = self._reader.scan()[0]
            self._newest, self._newest_known = records[-2:], True
        if len(self._newest) < 2:
            return None
        if any(tf.io.gfile.exists(self._path(DAMAGED + r.name)) for r in self._newest):
            # Found damaged since: not a source; the next save scans again.
            self._newest, self._newest_known = [], False
            return None
        return self._newest[0], self._newest[1]


@dataclasses.dataclass(frozen=True)
class _Sources:
    """What a save may hard-link to (see `FileSharing._share_sources`)."""

    record: CheckpointRecord
    files: Mapping[tuple[int, str], tuple[str, Mapping[str, Any]]]  # (size, hash) -> file
    damaged: set[tuple[int, int]]  # (st_dev, st_ino) of files of damaged checkpoints
    newest_files: set[tuple[int, int]]  # (st_dev, st_ino) of the newest checkpoint's files
