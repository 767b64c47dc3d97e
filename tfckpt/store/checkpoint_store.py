"""On-disk layout of a run directory and the commit protocol.

```
runs/exp1/
  checkpoint                 TF's state file: `tf.train.latest_checkpoint` reads it
  ckpt-000007/
    ckpt.index               written by tf.train.Checkpoint.write
    ckpt.data-0000i-of-0000N the tensors, split by `shards`; a file equal
                             to the newest checkpoint's is a hard link to it
    manifest.json            metadata + size and checksum of every file above
  ckpt-000008/ ...
  .tmp-ckpt-000009-<id>/     a save in progress (or left by a crash)
  .lock                      held by the process that writes (see `lock`)
```

A checkpoint is *committed* when its final directory exists and holds a
manifest whose files are all present with the recorded sizes. The commit
protocol makes that all-or-nothing: write into a temporary directory, fsync the
files, write and fsync the manifest, fsync the temporary directory, rename it
to its final name (the commit point), fsync the run directory, and only then
point TF's state file at it. Files shared with earlier checkpoints are linked
into the temporary directory before the commit, so a crash at any point leaves
the earlier checkpoints as they were. Deletion renames the checkpoint out of the way
first, so a crash mid-delete never leaves a half-deleted checkpoint that looks
committed. Leftover temporaries are removed by the next writer.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import json
import os
import uuid
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import tensorflow as tf

from tfckpt.errors import CheckpointReadError, CheckpointWriteError, CommittedWithError
from tfckpt.store import fs
from tfckpt.store.background import lower_thread_priority
from tfckpt.store.layout import (
    CHECKPOINT_NAME,
    DAMAGED,
    FORMAT,
    MANIFEST,
    PREFIX,
    SHARD,
    STATE_FILE,
    TMP,
    TRASH,
    CheckpointRecord,
    PendingCheckpoint,
    Problem,
    is_run_entry,
    jsonable,
    manifest_checksum,
    mb,
    now,
    os_error_text,
    record_from_manifest,
    versions,
)
from tfckpt.store.run_directory import RunDirectory
from tfckpt.store.sharing import FileSharing

__all__ = [
    "CheckpointRecord",
    "CheckpointStore",
    "PendingCheckpoint",
    "Problem",
    "is_run_entry",
    "jsonable",
    "now",
    "versions",
]


# Drop the cache of the third-newest checkpoint before a save writes
# (`CheckpointStore._recycle_cache`). Only the benchmark turns it off, to
# measure what it saves.
RECYCLE_CACHE = True


def _commit_step(name: str) -> None:
    """Called after each step of the commit protocol; crash tests hook it."""


class CheckpointStore(RunDirectory):
    """A run directory to write: commit and deletion of checkpoints, and TF's
    pointer file (reading is `RunDirectory`'s)."""

    def __init__(
        self,
        directory: str,
        *,
        fsync: bool = True,
        share_files: bool = False,
        background: bool = False,
    ):
        super().__init__(directory)
        # background: commits run beside training (async saves), so their
        # threads yield the CPU to it.
        self._background = background
        # fsync=False: a process crash is still safe (rename is atomic), but
        # a power loss may lose or tear the newest checkpoints.
        self._fsync_file = fs.fsync_file if fsync else _no_op
        self._fsync_dir = fs.fsync_dir if fsync else _no_op
        # share_files: a data shard with the same size and hash as one of the
        # newest checkpoint's is hard-linked to it instead of kept as a copy.
        self._sharing = FileSharing(
            directory,
            share_files=share_files,
            fsync_file=self._fsync_file,
            background=background,
        )
        self._last_seq = 0  # the newest seq this store reserved: never reused
        # Removes deleted checkpoints' files off the save's critical path.
        self._reaper: concurrent.futures.ThreadPoolExecutor | None = None
        self._reaping: list[concurrent.futures.Future] = []

    @property
    def share_files(self) -> bool:
        """Whether equal data shards are hard-linked (see `sharing`)."""
        return self._sharing.share_files

    # ---- writing -------------------------------------------------------

    def _next_seq(self, entries: list[str]) -> int:
        # Damage markers count too: a deleted damaged checkpoint's name is not reused.
        names = (e.removeprefix(DAMAGED) for e in entries)
        seqs = [int(m.group(1)) for e in names if (m := CHECKPOINT_NAME.match(e))]
        self._last_seq = max(seqs + [self._last_seq]) + 1
        return self._last_seq

    def _recycle_cache(self, entries: list[str]) -> None:
        """Drops the cached pages of the third-newest checkpoint's data files,
        just before a save writes its own: the save's pages are then memory
        the kernel has just freed, where memory freed long ago can cost a host
        fault per page on a VM (`fs.drop_cached_files`; a write + fsync of
        512 MB took 1.76 s against 0.46 s here: benchmarks/page_cache_reuse.py).
        With the default retention it is the checkpoint deleted after this save.
        The newest stays cached (what a restore reads), and so does the one
        before it (what `sharing` reads back); a file hard-linked to another
        checkpoint's keeps its pages. Every save drops the checkpoint that has
        just become third-newest, so older ones were dropped by earlier saves.
        Damaged checkpoints do not count: `sharing` skips them too."""
        if not RECYCLE_CACHE:
            return
        damaged = {e.removeprefix(DAMAGED) for e in entries if e.startswith(DAMAGED)}
        intact = sorted(
            (int(m.group(1)), e)
            for e in entries
            if (m := CHECKPOINT_NAME.match(e)) and e not in damaged
        )
        if len(intact) >= 3:
            fs.drop_cached_files(self._path(intact[-3][1]), SHARD)

    def reserve(self, seq: int) -> None:
        """Numbers up to `seq` are taken elsewhere (a remote tier's): the
        next checkpoint gets a larger one."""
        self._last_seq = max(self._last_seq, seq)

    def begin(self, expected_size: int = 0, *, seq: int | None = None) -> PendingCheckpoint:
        """Reserves the next checkpoint: checks free space, makes its temp dir.

        `expected_size` (bytes) is compared with the free space where the
        filesystem reports it, so a checkpoint that cannot fit fails at once.
        `seq` reserves that number (and name) instead of the next one: a copy
        keeps its source's names (`tfckpt.copy`, which first checks that the
        name is free).
        """
        if seq is not None:
            self._last_seq = max(self._last_seq, seq)
        else:
            try:
                entries = self.entries()
            except CheckpointReadError as e:
                raise CheckpointWriteError(f"Could not save a checkpoint: {e}") from e
            seq = self._next_seq(entries)
            self._recycle_cache(entries)
        name = f"ckpt-{seq:06d}"
        free = fs.free_bytes(self.directory)
        self._reaping = [f for f in self._reaping if not f.done()]
        if free is not None and expected_size > free and self._reaping:
            # Deleted checkpoints' files are still being removed: their space first.
            self.drain()
            free = fs.free_bytes(self.directory)
        if free is not None and expected_size > free:
            raise CheckpointWriteError(
                f"Not enough space to save checkpoint {name} in {self.directory!r}: it "
                f"needs about {mb(expected_size)}, {mb(free)} are free. Nothing was "
                "written and earlier checkpoints are intact; free some space (or keep "
                "fewer checkpoints)."
            )
        pending = PendingCheckpoint(
            seq, name, self._path(f"{TMP}{name}-{uuid.uuid4().hex[:8]}"), expected_size
        )
        with self.guard(pending):
            tf.io.gfile.makedirs(pending.tmp)
        return pending

    @contextlib.contextmanager
    def guard(self, pending: PendingCheckpoint) -> Iterator[None]:
        """On any error inside: remove the temp dir (the run directory is as it
        was) and raise OS errors as `CheckpointWriteError`."""
        try:
            yield
        except (OSError, tf.errors.OpError) as e:
            fs.remove_quietly(pending.tmp)
            free = fs.free_bytes(self.directory)
            space = f" {mb(free)} are free." if free is not None else ""
            raise CheckpointWriteError(
                f"Could not save checkpoint {pending.name} in {self.directory!r}: "
                f"{os_error_text(e)}. The checkpoint needs about "
                f"{mb(pending.expected_size)};{space} No partial checkpoint is left and "
                "earlier checkpoints are intact."
            ) from e
        except BaseException:
            fs.remove_quietly(pending.tmp)
            raise

    def abort(self, pending: PendingCheckpoint) -> None:
        fs.remove_quietly(pending.tmp)

    def commit(
        self,
        write: Callable[[str], object],
        metadata: Mapping[str, Any],
        files: Mapping[str, bytes] | None = None,
        *,
        expected_size: int = 0,
    ) -> CheckpointRecord:
        """Writes a checkpoint through `write(prefix)` and commits it atomically.

        `files` are extra small files (name -> bytes) stored and checksummed
        with the checkpoint. On any error the temporary directory is removed
        and the run directory is exactly as before; OS errors are raised as
        `CheckpointWriteError`.
        """
        pending = self.begin(expected_size)
        with self.guard(pending):
            write(pending.prefix)
        return self.finish(pending, metadata, files)

    def finish(
        self,
        pending: PendingCheckpoint,
        metadata: Mapping[str, Any],
        files: Mapping[str, bytes] | None = None,
    ) -> CheckpointRecord:
        """Commits a checkpoint whose TF files are complete in `pending.tmp`.

        Raises `CheckpointWriteError` when it is not committed, and
        `CommittedWithError` (with the committed record) when a step after the
        commit point failed.
        """
        with self.guard(pending):
            manifest = self._write_and_publish(
                metadata, files or {}, pending.seq, pending.tmp, pending.name
            )
        # Committed. Built from what was just written: reading it back needs
        # the file descriptors or I/O that may be what is failing.
        try:
            record = record_from_manifest(
                pending.name, pending.seq, self._path(pending.name, PREFIX), manifest
            )
        except BaseException:
            self._sharing.committed(None)  # not known: the next save scans
            raise
        self._sharing.committed(record)
        try:
            self._fsync_dir(self.directory)
        except OSError as e:
            raise CommittedWithError(
                f"Checkpoint {pending.name} is committed in {self.directory!r}, but the "
                f"run directory could not be synced: {os_error_text(e)}. It counts as "
                "saved; a power loss may still lose it.",
                record,
            ) from e
        _commit_step("fsync_dir")
        return record

    def _write_and_publish(
        self,
        metadata: Mapping[str, Any],
        extra: Mapping[str, bytes],
        seq: int,
        tmp: str,
        name: str,
    ) -> dict[str, Any]:
        for fname, data in extra.items():
            with tf.io.gfile.GFile(fs.join(tmp, fname), "wb") as f:
                f.write(data)
        _commit_step("write")
        files = sorted(e.rstrip("/") for e in tf.io.gfile.listdir(tmp))
        files = _check_tf_files(tmp, files)
        entries = self._sharing.seal(tmp, files)
        _commit_step("link")
        _commit_step("fsync_files")
        manifest = {
            **jsonable(dict(metadata)),
            "format": FORMAT,
            "seq": seq,
            "prefix": PREFIX,
            "files": entries,
        }
        manifest["checksum"] = manifest_checksum(manifest)
        with tf.io.gfile.GFile(fs.join(tmp, MANIFEST), "wb") as f:
            f.write(json.dumps(manifest, indent=1, sort_keys=True).encode())
        self._fsync_file(fs.join(tmp, MANIFEST))
        _commit_step("manifest")
        self._fsync_dir(tmp)
        _commit_step("fsync_tmpdir")
        self._publish(tmp, self._path(name), files)
        _commit_step("rename")
        return manifest

    @staticmethod
    def _publish(tmp: str, final: str, files: list[str]) -> None:
        if fs.is_local(final):
            tf.io.gfile.rename(tmp, final)  # atomic: the commit point
            return
        # Object stores and ram:// cannot rename a directory with its contents:
        # move file by file, the manifest last, so the manifest is the commit
        # point (a directory without it is never taken for a checkpoint).
        tf.io.gfile.makedirs(final)
        for fname in [*files, MANIFEST]:
            tf.io.gfile.rename(fs.join(tmp, fname), fs.join(final, fname))
        fs.remove_quietly(tmp)

    def write_pointer(self, records: list[CheckpointRecord]) -> None:
        """Points TF's `checkpoint` state file at the newest of `records`.

        The same text TF's `update_checkpoint_state(save_relative_paths=True)`
        writes, but through a temporary file that is fsynced before it is
        renamed into place (TF renames it unsynced). Raises
        `CheckpointWriteError` when the file cannot be written.
        """
        if not records:
            return
        final = self._path(STATE_FILE)
        # TF's own temporary name: a crash leaves what remove_leftovers removes.
        tmp = f"{final}.tmp{uuid.uuid4().hex}"
        try:
            text = _state_file_text(self.directory, records)
            if not fs.is_local(final):
                # Object stores write an object atomically (TF writes it directly too).
                with tf.io.gfile.GFile(final, "wb") as f:
                    f.write(text)
            else:
                with tf.io.gfile.GFile(tmp, "wb") as f:
                    f.write(text)
                self._fsync_file(tmp)
                tf.io.gfile.rename(tmp, final, overwrite=True)
                self._fsync_dir(self.directory)
        except (OSError, tf.errors.OpError) as e:
            fs.remove_quietly(tmp)
            raise CheckpointWriteError(
                f"Could not write TF's checkpoint state file {final!r} (what "
                f"tf.train.latest_checkpoint reads): {os_error_text(e)}. The checkpoints "
                "are intact; tfckpt does not need this file and rewrites it at the next "
                "save or start."
            ) from e
        _commit_step("state_file")

    def pointer_is_current(self, records: list[CheckpointRecord]) -> bool:
        try:
            latest = tf.train.latest_checkpoint(self.directory)
        except (tf.errors.OpError, ValueError):
            return False
        return bool(records) and latest == records[-1].path

    def delete(self, record: CheckpointRecord) -> None:
        """Removes a checkpoint: an atomic rename out of the way, then the files.

        Raises `CheckpointWriteError` when it fails; `is_committed` then says
        whether the checkpoint is still there.
        """
        trash = self._path(f"{TRASH}{record.name}-{uuid.uuid4().hex[:8]}")
        self._sharing.deleted(record.name)
        try:
            if not fs.is_local(trash):
                # No directory rename there: the manifest goes first, so a crash
                # mid-delete leaves an uncommitted directory, never a torn checkpoint.
                tf.io.gfile.remove(self._path(record.name, MANIFEST))
                fs.remove_quietly(self._path(record.name))
                return
            tf.io.gfile.rename(self._path(record.name), trash)
        except (OSError, tf.errors.OpError) as e:
            raise CheckpointWriteError(
                f"Could not delete checkpoint {record.name} in {self.directory!r}: "
                f"{os_error_text(e)}. It is kept."
            ) from e
        try:
            self._fsync_dir(self.directory)
        except OSError as e:
            fs.remove_quietly(trash)  # its space all the same
            raise CheckpointWriteError(
                f"Deleted checkpoint {record.name} in {self.directory!r}, but the run "
                f"directory could not be synced: {os_error_text(e)}. After a power loss "
                "it may be back (and is deleted again)."
            ) from e
        _commit_step("delete")
        # No longer a checkpoint (the rename was the deletion): its files go
        # in the background; the next save waits for them (`drain`).
        if self._reaper is None:
            self._reaper = concurrent.futures.ThreadPoolExecutor(
                max_workers=1,
                thread_name_prefix="tfckpt-reap",
                initializer=lower_thread_priority if self._background else None,
            )
        self._reaping.append(self._reaper.submit(fs.remove_quietly, trash))

    def drain(self) -> None:
        """Waits until the files of deleted checkpoints are gone."""
        reaping, self._reaping = self._reaping, []
        concurrent.futures.wait(reaping)

    def close(self) -> None:
        """Drains, and stops the background threads."""
        self.drain()
        if self._reaper is not None:
            self._reaper.shutdown(wait=True)
            self._reaper = None
        self._sharing.close()

    def remove_leftovers(self) -> list[str]:
        """Removes temporaries of interrupted saves and deletions; only the writer calls it."""
        names = self.leftovers()
        for name in names:
            fs.remove_quietly(self._path(name))
        return names


def _check_tf_files(tmp: str, files: list[str]) -> list[str]:
    """The files to commit; raises unless `files` (in `tmp`) hold TF's index and
    every data shard it names: a sharded save that failed leaves its parts in
    `<prefix>_temp/` and no index or shards, and must never be committed. A
    complete save whose `<prefix>_temp/` TF could not remove (an I/O error on
    its cleanup) is committed without it."""
    shards = [m for f in files if (m := SHARD.match(f))]
    counts = {int(m.group(2)) for m in shards}
    found = {int(m.group(1)) for m in shards}
    problems = []
    if f"{PREFIX}.index" not in files:
        problems.append(f"no {PREFIX}.index")
    if len(counts) != 1 or found != set(range(counts.pop())):
        problems.append(f"data shards {sorted(m.group(0) for m in shards)} are not a full set")
    dirs = [f for f in files if tf.io.gfile.isdir(fs.join(tmp, f))]
    if not problems and dirs == [f"{PREFIX}_temp"]:
        fs.remove_quietly(fs.join(tmp, dirs[0]))  # TF's merged parts: garbage
        if not tf.io.gfile.exists(fs.join(tmp, dirs[0])):
            return [f for f in files if f not in dirs]
    if dirs:
        problems.append(f"unexpected directories {dirs}")
    if problems:
        raise CheckpointWriteError(
            "TensorFlow's checkpoint files are incomplete (" + "; ".join(problems) + ")"
        )
    return files


def _state_file_text(directory: str, records: list[CheckpointRecord]) -> bytes:
    """What `update_checkpoint_state(save_relative_paths=True)` writes."""
    from google.protobuf import text_format

    paths = [
        os.path.relpath(r.path, directory) if os.path.isabs(r.path) else r.path for r in records
    ]
    state = tf.compat.v1.train.generate_checkpoint_state_proto(
        directory,
        paths[-1],
        all_model_checkpoint_paths=paths,
        all_model_checkpoint_timestamps=[r.time for r in records],
    )
    return text_format.MessageToString(state).encode()


def _no_op(path: str) -> None:
    pass
