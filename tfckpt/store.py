"""On-disk layout of a run directory and the commit protocol.

```
runs/exp1/
  checkpoint                 TF's state file: `tf.train.latest_checkpoint` reads it
  ckpt-000007/
    ckpt.index               written by tf.train.Checkpoint.write
    ckpt.data-0000i-of-0000N one per large tensor (see `_shards`); a file equal
                             to the newest checkpoint's is a hard link to it
    manifest.json            metadata + size and checksum of every file above
  ckpt-000008/ ...
  .tmp-ckpt-000009-<id>/     a save in progress (or left by a crash)
  .lock                      held by the process that writes (see `_lock`)
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
import dataclasses
import errno
import json
import math
import os
import re
import stat
import sys
import time
import uuid
import warnings
import zlib
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import tensorflow as tf

from tfckpt import _fs
from tfckpt._background import lower_thread_priority
from tfckpt.errors import CheckpointReadError, CheckpointWriteError, CommittedWithError

# tfckpt/2: data shards carry no CRC-32 of our own (TF's index holds a CRC32C
# of every tensor, and the index is in the manifest with its CRC-32), so a
# save reads nothing back. tfckpt/1 manifests (CRC-32 of every file) are read.
FORMAT = "tfckpt/2"
_FORMATS = ("tfckpt/1", FORMAT)
MANIFEST = "manifest.json"
PREFIX = "ckpt"
STATE_FILE = "checkpoint"
_NAME = re.compile(r"^ckpt-(\d+)$")
_TMP = ".tmp-"
_TRASH = ".trash-"
_DAMAGED = ".damaged-"
# TF's temporary name for the state file (`file_io.atomic_write_string_to_file`
# appends ".tmp" and a uuid4 hex), also used by `write_pointer`.
_STATE_TMP = re.compile(r"^checkpoint\.tmp[0-9a-f]{32}$")
_RESCANS = 5  # listings a scan takes at most while the writer deletes under it
_SEAL_THREADS = 4  # files hashed, linked or fsynced at once by a commit


def _commit_step(name: str) -> None:
    """Called after each step of the commit protocol; crash tests hook it."""


@dataclasses.dataclass(frozen=True)
class CheckpointRecord:
    """One committed checkpoint, as its manifest describes it.

    Attributes:
        name: directory name inside the run directory, e.g. `"ckpt-000007"`.
        seq: commit sequence number; larger is newer.
        step: global training step (optimizer iterations) at save time.
        epoch: epochs completed at save time.
        batch: batches completed in the epoch in progress (0 at epoch end).
        metrics: logs/metrics at save time.
        time: wall time of the save (seconds since the Unix epoch).
        path: the prefix `tf.train.Checkpoint.read` accepts.
        size: bytes on disk (checkpoint files, manifest excluded).
        kept: why retention keeps it (`None` when not computed or not kept).
    """

    name: str
    seq: int
    step: int
    epoch: int
    batch: int
    metrics: Mapping[str, Any]
    time: float
    path: str
    size: int
    kept: str | None = None
    manifest: Mapping[str, Any] = dataclasses.field(default_factory=dict, repr=False, compare=False)

    @property
    def directory(self) -> str:
        return self.path[: -len(PREFIX) - 1]


@dataclasses.dataclass(frozen=True)
class PendingCheckpoint:
    """A checkpoint being written: its number, name and temporary directory."""

    seq: int
    name: str
    tmp: str
    expected_size: int

    @property
    def prefix(self) -> str:
        return _fs.join(self.tmp, PREFIX)


@dataclasses.dataclass(frozen=True)
class Problem:
    """A checkpoint directory that is not a valid committed checkpoint."""

    name: str
    reason: str


def jsonable(value: Any) -> Any:
    """Metric values as JSON: Python floats, non-finite ones as `None`."""
    if isinstance(value, Mapping):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    if isinstance(value, (bool, str, type(None))):
        return value
    if isinstance(value, int):
        return value
    try:
        number = float(value)
    except (TypeError, ValueError):
        return str(value)
    if hasattr(value, "dtype") and "int" in str(value.dtype):
        return int(value)
    return number if math.isfinite(number) else None


def versions() -> dict[str, str]:
    import keras

    from tfckpt import __version__

    return {
        "tfckpt": __version__,
        "tensorflow": tf.__version__,
        "keras": keras.__version__,
        "python": sys.version.split()[0],
    }


class CheckpointStore:
    """A run directory: listing, verification, commit and deletion."""

    def __init__(
        self,
        directory: str,
        *,
        fsync: bool = True,
        share_files: bool = False,
        background: bool = False,
    ):
        self.directory = directory
        # background: commits run beside training (async saves), so their
        # threads yield the CPU to it.
        self._background = background
        # share_files: a data shard with the same size and hash as one of the
        # newest checkpoint's is hard-linked to it instead of kept as a copy.
        self.share_files = share_files and _fs.is_local(directory)
        self._newest: CheckpointRecord | None = None  # the one to share files with
        self._newest_known = False
        # fsync=False: a process crash is still safe (rename is atomic), but
        # a power loss may lose or tear the newest checkpoints.
        self._fsync_file = _fs.fsync_file if fsync else _no_op
        self._fsync_dir = _fs.fsync_dir if fsync else _no_op
        self._last_seq = 0  # the newest seq this store reserved: never reused
        # Removes deleted checkpoints' files off the save's critical path.
        self._reaper: concurrent.futures.ThreadPoolExecutor | None = None
        self._reaping: list[concurrent.futures.Future] = []
        self._sealer: concurrent.futures.ThreadPoolExecutor | None = None

    # ---- reading -------------------------------------------------------

    def _path(self, *names: str) -> str:
        return _fs.join(self.directory, *names)

    def _entries(self) -> list[str]:
        # Not `isdir` first: it answers False on any error, and a listing that
        # looks empty on an I/O error would reuse names and lose checkpoints.
        try:
            return [e.rstrip("/") for e in tf.io.gfile.listdir(self.directory)]
        except tf.errors.NotFoundError:
            try:
                present = tf.io.gfile.exists(self.directory)
            except tf.errors.OpError as e:
                raise self.read_error(e) from e
            if present:
                raise self.read_error(f"{self.directory} cannot be listed") from None
            return []  # no run directory yet
        except tf.errors.OpError as e:
            raise self.read_error(e) from e

    def scan(self) -> tuple[list[CheckpointRecord], list[Problem]]:
        """Committed checkpoints (oldest first) and the directories that are not.

        Sizes are checked, checksums are not (see `check`). Directories that
        are not committed checkpoints at all (see `vanished`) are in neither.
        """
        entries = self._entries()
        for _ in range(_RESCANS):
            records, problems, gone = self._scan(entries)
            if not gone:
                break
            # Some were deleted meanwhile: the listing may predate the writer's
            # newest commit (it commits, then deletes), so list again.
            again = self._entries()
            if again == entries:
                break
            entries = again
        return records, problems

    def _scan(self, entries: list[str]) -> tuple[list[CheckpointRecord], list[Problem], bool]:
        records, problems, gone = [], [], False
        names = sorted((int(m.group(1)), e) for e in entries if (m := _NAME.match(e)))
        damaged = {e[len(_DAMAGED) :] for e in entries if e.startswith(_DAMAGED)}
        for seq, name in names:
            if name in damaged:
                problems.append(Problem(name, self._damage_reason(name)))
                continue
            try:
                record = self._load(name, seq)
                reason = self._check_sizes(record)
            except _Corrupt as e:
                record, reason = None, str(e)
            if reason is None:
                records.append(record)
            elif self.vanished(name):
                gone = True
            else:
                problems.append(Problem(name, reason))
        return records, problems, gone

    def vanished(self, name: str) -> bool:
        """Whether `name` is no committed checkpoint at all (rather than a
        damaged one): deleted meanwhile by the writer, or, where directories
        cannot be renamed, a save or deletion that crashed before it had a
        manifest (`_publish` moves the manifest last, `delete` removes it
        first). Neither is damage, and readers ignore both."""
        # Commits and deletions rename the whole directory on local disks: a
        # `ckpt-*` directory without its manifest was damaged after its commit.
        # Not `isdir`/`exists`: they answer False on an I/O error too, and an
        # I/O error is no deletion.
        path = self._path(name) if _fs.is_local(self.directory) else self._path(name, MANIFEST)
        try:
            tf.io.gfile.stat(path)
        except tf.errors.NotFoundError:
            return True
        except tf.errors.OpError:
            return False  # cannot tell: not taken for a deletion
        return False

    def _load(self, name: str, seq: int) -> CheckpointRecord:
        path = self._path(name, MANIFEST)
        try:
            manifest = json.loads(_fs.read_bytes(path))
        except tf.errors.NotFoundError:
            raise _Corrupt("no manifest.json (not committed)") from None
        except tf.errors.OpError as e:
            raise self.read_error(e) from e
        except (ValueError, UnicodeDecodeError) as e:
            raise _Corrupt(f"unreadable manifest.json ({e})") from None
        try:
            if manifest.get("checksum") != _manifest_checksum(manifest):
                raise _Corrupt("manifest.json does not match its checksum (corrupted)")
            if manifest["format"] not in _FORMATS or manifest["seq"] != seq:
                raise _Corrupt(f"manifest.json is not a {FORMAT} manifest for {name}")
            # A run directory may come from someone else: no name in it may
            # lead outside the checkpoint's own directory.
            unsafe = [f for f in [manifest["prefix"], *manifest["files"]] if not _plain_name(f)]
            if unsafe or manifest["prefix"] != PREFIX:
                raise _Corrupt(f"manifest.json names files outside the checkpoint: {unsafe}")
            return _record(name, seq, self._path(name, PREFIX), manifest)
        except (KeyError, TypeError, ValueError, AttributeError) as e:
            raise _Corrupt(f"malformed manifest.json ({e!r})") from None

    def _check_sizes(self, record: CheckpointRecord) -> str | None:
        for fname, entry in record.manifest["files"].items():
            try:
                actual = _fs.size(self._path(record.name, fname))
            except tf.errors.NotFoundError:
                return f"missing file {fname}"
            except tf.errors.OpError as e:
                raise self.read_error(e) from e
            if actual != entry["size"]:
                return f"{fname} has {actual} bytes, manifest says {entry['size']}"
        return None

    def shared_bytes(self, record: CheckpointRecord) -> int:
        """Bytes of `record`'s files that are hard-linked (shared with other
        checkpoints, see `share_files`): deleting `record` does not free them
        while another checkpoint links them."""
        shared = 0
        for fname, entry in record.manifest["files"].items():
            links = _fs.link_count(self._path(record.name, fname))
            if links is not None and links > 1:
                shared += int(entry["size"])
        return shared

    def freed_bytes(self, records: list[CheckpointRecord]) -> int:
        """Bytes that deleting all of `records` frees: their files that no
        other checkpoint links (hard links counted by inode)."""
        links: dict[tuple[int, int], list[int]] = {}  # inode -> [size, links among records]
        total = 0
        for record in records:
            for fname, entry in record.manifest["files"].items():
                path = self._path(record.name, fname)
                try:
                    st = os.stat(_fs.local_path(path)) if _fs.is_local(path) else None
                except OSError:
                    st = None
                if st is None or st.st_nlink == 1:
                    total += int(entry["size"])
                    continue
                seen = links.setdefault(
                    (st.st_dev, st.st_ino), [int(entry["size"]), 0, st.st_nlink]
                )
                seen[1] += 1
        return total + sum(size for size, found, count in links.values() if found >= count)

    def _damage_reason(self, name: str) -> str:
        try:
            reason = _fs.read_bytes(self._path(_DAMAGED + name)).decode(errors="replace")
        except tf.errors.OpError:
            reason = "?"
        return f"found damaged earlier: {reason}"

    def mark_damaged(self, name: str, reason: str) -> None:
        """Records that `name` failed verification: it no longer counts as a
        checkpoint (nor as the newest one), and retention never deletes it."""
        try:
            with tf.io.gfile.GFile(self._path(_DAMAGED + name), "wb") as f:
                f.write(reason.encode())
        except tf.errors.OpError:
            pass  # a read-only directory: the checksum check catches it again

    def check(self, record: CheckpointRecord, *, data: bool = True) -> str | None:
        """What is wrong with `record`'s files (sizes and checksums), or `None`.

        Small files are checked against the CRC-32 in the manifest. TF's data
        shards are checked by reading every tensor through TF, which compares
        it with the CRC32C stored in the index. `data=False` skips the data
        shards: restoring reads them through TF, which checks them then (a
        mismatch raises `DataLossError`), so reading them twice would only
        double the cost.
        """
        reason = self._check_sizes(record)
        if reason:
            return reason
        tensors_to_check = False
        for fname, entry in record.manifest["files"].items():
            if ".data-" in fname and (not data or "crc32" not in entry):
                tensors_to_check = tensors_to_check or data
                continue
            try:
                crc = _fs.crc32(self._path(record.name, fname))
            except tf.errors.NotFoundError:
                return f"missing file {fname}"
            except tf.errors.OpError as e:
                raise self.read_error(e) from e
            if crc != entry["crc32"]:
                return f"{fname} does not match its checksum (corrupted)"
        if not tensors_to_check:
            return None
        reason = self._check_tensors(record)
        return reason and reason + self._shared_damage(record)

    def _shared_damage(self, record: CheckpointRecord) -> str:
        """Which hashed data shards of `record` are damaged, and which other
        checkpoints share them (the same file, so the same damage)."""
        notes = []
        for fname, entry in sorted(record.manifest["files"].items()):
            path = self._path(record.name, fname)
            try:
                if "xxh3" not in entry or _fs.content_hash(path) == entry["xxh3"]:
                    continue
                inode = os.stat(path)
            except (OSError, tf.errors.OpError):
                continue
            sharers = []
            for other in self._entries():
                if other == record.name or not _NAME.match(other):
                    continue
                try:
                    st = os.stat(self._path(other, fname))
                except OSError:
                    continue
                if (st.st_ino, st.st_dev) == (inode.st_ino, inode.st_dev):
                    sharers.append(other)
            note = f"{fname} does not match its hash"
            if sharers:
                note += (
                    f"; it is shared (hard-linked) with {', '.join(sorted(sharers))}, "
                    "damaged by the same file"
                )
            notes.append(note)
        return f" ({'; '.join(notes)})" if notes else ""

    def _check_tensors(self, record: CheckpointRecord) -> str | None:
        """Reads every tensor of `record` through TF (CRC32C per tensor)."""
        try:
            reader = tf.compat.v1.train.NewCheckpointReader(record.path)
            for key in sorted(reader.get_variable_to_shape_map()):
                reader.get_tensor(key)
        except tf.errors.DataLossError as e:
            return f"a data shard does not match its checksums (corrupted): {_os_error_text(e)}"
        except (tf.errors.OpError, RuntimeError, ValueError) as e:
            # (NotFound included: the sizes of every file were just checked.)
            text = _os_error_text(e)
            if "Checksum does not match" in text or "TensorBundle" in text:
                return f"a data shard does not match its checksums (corrupted): {text}"
            raise self.read_error(e, record.name) from e
        return None

    # ---- writing -------------------------------------------------------

    def read_error(self, e: BaseException | str, name: str | None = None) -> CheckpointReadError:
        """An I/O error while reading the run directory (or checkpoint `name`
        in it): not damage."""
        what = f"checkpoint {name} in {self.directory!r}" if name else f"{self.directory!r}"
        return CheckpointReadError(
            f"Cannot read {what}: {_os_error_text(e)}. Nothing was changed; reading "
            "again may succeed."
        )

    def _next_seq(self) -> int:
        # Damage markers count too: a deleted damaged checkpoint's name is not reused.
        names = (e.removeprefix(_DAMAGED) for e in self._entries())
        seqs = [int(m.group(1)) for e in names if (m := _NAME.match(e))]
        self._last_seq = max(seqs + [self._last_seq]) + 1
        return self._last_seq

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
                seq = self._next_seq()
            except CheckpointReadError as e:
                raise CheckpointWriteError(f"Could not save a checkpoint: {e}") from e
        name = f"ckpt-{seq:06d}"
        free = _fs.free_bytes(self.directory)
        if free is not None and expected_size > free:
            raise CheckpointWriteError(
                f"Not enough space to save checkpoint {name} in {self.directory!r}: it "
                f"needs about {_mb(expected_size)}, {_mb(free)} are free. Nothing was "
                "written and earlier checkpoints are intact; free some space (or keep "
                "fewer checkpoints)."
            )
        pending = PendingCheckpoint(
            seq, name, self._path(f"{_TMP}{name}-{uuid.uuid4().hex[:8]}"), expected_size
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
            _remove_quietly(pending.tmp)
            free = _fs.free_bytes(self.directory)
            space = f" {_mb(free)} are free." if free is not None else ""
            raise CheckpointWriteError(
                f"Could not save checkpoint {pending.name} in {self.directory!r}: "
                f"{_os_error_text(e)}. The checkpoint needs about "
                f"{_mb(pending.expected_size)};{space} No partial checkpoint is left and "
                "earlier checkpoints are intact."
            ) from e
        except BaseException:
            _remove_quietly(pending.tmp)
            raise

    def abort(self, pending: PendingCheckpoint) -> None:
        _remove_quietly(pending.tmp)

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
        self._newest, self._newest_known = None, False
        # Committed. Built from what was just written: reading it back needs
        # the file descriptors or I/O that may be what is failing.
        record = _record(pending.name, pending.seq, self._path(pending.name, PREFIX), manifest)
        self._newest, self._newest_known = record, True
        try:
            self._fsync_dir(self.directory)
        except OSError as e:
            raise CommittedWithError(
                f"Checkpoint {pending.name} is committed in {self.directory!r}, but the "
                f"run directory could not be synced: {_os_error_text(e)}. It counts as "
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
            with tf.io.gfile.GFile(_fs.join(tmp, fname), "wb") as f:
                f.write(data)
        _commit_step("write")
        files = sorted(e.rstrip("/") for e in tf.io.gfile.listdir(tmp))
        files = _check_tf_files(tmp, files)
        entries = self._seal(tmp, files)
        _commit_step("link")
        _commit_step("fsync_files")
        manifest = {
            **jsonable(dict(metadata)),
            "format": FORMAT,
            "seq": seq,
            "prefix": PREFIX,
            "files": entries,
        }
        manifest["checksum"] = _manifest_checksum(manifest)
        with tf.io.gfile.GFile(_fs.join(tmp, MANIFEST), "wb") as f:
            f.write(json.dumps(manifest, indent=1, sort_keys=True).encode())
        self._fsync_file(_fs.join(tmp, MANIFEST))
        _commit_step("manifest")
        self._fsync_dir(tmp)
        _commit_step("fsync_tmpdir")
        self._publish(tmp, self._path(name), files)
        _commit_step("rename")
        return manifest

    def _file_entry(self, path: str) -> dict[str, Any]:
        if not _SHARD.match(os.path.basename(path)):
            return {"size": _fs.size(path), "crc32": _fs.crc32(path)}
        # TF's per-tensor CRC32C covers a data shard; the hash is what a later
        # save compares its own shard with, to share the file.
        if self.share_files:
            return {"size": _fs.size(path), "xxh3": _fs.content_hash(path)}
        return {"size": _fs.size(path)}

    def _seal(self, tmp: str, files: list[str]) -> dict[str, dict[str, Any]]:
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
        path = _fs.join(tmp, fname)
        entry = self._file_entry(path)
        if sources is not None and "xxh3" in entry and self._link_to(sources, entry, path):
            return entry  # synced when it was first committed
        self._fsync_file(path)
        if "xxh3" in entry:
            # What a later save checks before it links to this file: a file
            # changed in place since has another modification time.
            entry["mtime_ns"] = os.stat(_fs.local_path(path)).st_mtime_ns
        return entry

    def _link_to(self, sources: _Sources, entry: dict[str, Any], path: str) -> bool:
        """Replaces the data shard at `path` by a hard link to an equal file
        (same size and hash) of the newest checkpoint, when that file is still
        as it was committed."""
        found = sources.files.get((entry["size"], entry["xxh3"]))
        if found is None or not self.share_files:
            return False
        name, earlier = found
        source = self._path(sources.record.name, name)
        # The run directory may come from someone else: link only our own
        # regular files, unchanged since their commit and not found damaged.
        try:
            st = os.lstat(_fs.local_path(source))
        except OSError:
            return False
        if (
            not stat.S_ISREG(st.st_mode)
            or st.st_uid != os.geteuid()
            or st.st_size != entry["size"]
            or st.st_mtime_ns != earlier.get("mtime_ns")
            or (st.st_dev, st.st_ino) in sources.damaged
        ):
            return False
        try:
            _fs.replace_with_link(source, path)
        except OSError as e:
            # The copy just written is complete: a link that cannot be made
            # (source deleted meanwhile, too many links, an I/O error) only
            # costs the disk space sharing would have saved.
            if e.errno in _NO_LINKS and self.share_files:
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
        """What this save may link to: the newest committed checkpoint's data
        shards by (size, hash), unless its directory is not a real directory;
        and the files of checkpoints found damaged (never linked again)."""
        try:
            record = self._share_source()
            if record is None:
                return None
            if not stat.S_ISDIR(os.lstat(_fs.local_path(self._path(record.name))).st_mode):
                return None  # a symlink in someone else's run directory
            damaged = set()
            for entry in self._entries():
                if entry.startswith(_DAMAGED) and _NAME.match(entry[len(_DAMAGED) :]):
                    directory = _fs.local_path(self._path(entry[len(_DAMAGED) :]))
                    for fname in os.listdir(directory) if os.path.isdir(directory) else []:
                        st = os.lstat(os.path.join(directory, fname))
                        damaged.add((st.st_dev, st.st_ino))
        except (CheckpointReadError, tf.errors.OpError, OSError):
            return None  # cannot tell what to share with: keep every copy
        files = {
            (e["size"], e["xxh3"]): (fname, e)
            for fname, e in record.manifest["files"].items()
            if "xxh3" in e and _SHARD.match(fname)
        }
        return _Sources(record, files, damaged)

    def _share_source(self) -> CheckpointRecord | None:
        if not self._newest_known:
            records = self.scan()[0]
            self._newest, self._newest_known = (records[-1] if records else None), True
        newest = self._newest
        if newest is not None and tf.io.gfile.exists(self._path(_DAMAGED + newest.name)):
            # Found damaged since: its files are not to be shared into new checkpoints.
            self._newest, self._newest_known = None, False
        return self._newest

    @staticmethod
    def _publish(tmp: str, final: str, files: list[str]) -> None:
        if _fs.is_local(final):
            tf.io.gfile.rename(tmp, final)  # atomic: the commit point
            return
        # Object stores and ram:// cannot rename a directory with its contents:
        # move file by file, the manifest last, so the manifest is the commit
        # point (a directory without it is never taken for a checkpoint).
        tf.io.gfile.makedirs(final)
        for fname in [*files, MANIFEST]:
            tf.io.gfile.rename(_fs.join(tmp, fname), _fs.join(final, fname))
        _remove_quietly(tmp)

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
            if not _fs.is_local(final):
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
            _remove_quietly(tmp)
            raise CheckpointWriteError(
                f"Could not write TF's checkpoint state file {final!r} (what "
                f"tf.train.latest_checkpoint reads): {_os_error_text(e)}. The checkpoints "
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
        trash = self._path(f"{_TRASH}{record.name}-{uuid.uuid4().hex[:8]}")
        if self._newest is not None and self._newest.name == record.name:
            self._newest, self._newest_known = None, False
        try:
            if not _fs.is_local(trash):
                # No directory rename there: the manifest goes first, so a crash
                # mid-delete leaves an uncommitted directory, never a torn checkpoint.
                tf.io.gfile.remove(self._path(record.name, MANIFEST))
                _remove_quietly(self._path(record.name))
                return
            tf.io.gfile.rename(self._path(record.name), trash)
        except (OSError, tf.errors.OpError) as e:
            raise CheckpointWriteError(
                f"Could not delete checkpoint {record.name} in {self.directory!r}: "
                f"{_os_error_text(e)}. It is kept."
            ) from e
        try:
            self._fsync_dir(self.directory)
        except OSError as e:
            _remove_quietly(trash)  # its space all the same
            raise CheckpointWriteError(
                f"Deleted checkpoint {record.name} in {self.directory!r}, but the run "
                f"directory could not be synced: {_os_error_text(e)}. After a power loss "
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
        self._reaping.append(self._reaper.submit(_remove_quietly, trash))

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
        if self._sealer is not None:
            self._sealer.shutdown(wait=True)
            self._sealer = None

    def is_committed(self, record: CheckpointRecord) -> bool:
        """Whether `record` is still in place (has its manifest); `True` when
        that cannot be told."""
        try:
            return tf.io.gfile.exists(self._path(record.name, MANIFEST))
        except tf.errors.OpError:
            return True

    def leftovers(self) -> list[str]:
        return [e for e in self._entries() if e.startswith((_TMP, _TRASH)) or _STATE_TMP.match(e)]

    def remove_leftovers(self) -> list[str]:
        """Removes temporaries of interrupted saves and deletions; only the writer calls it."""
        names = self.leftovers()
        for name in names:
            _remove_quietly(self._path(name))
        return names


class _Corrupt(Exception):
    pass


@dataclasses.dataclass(frozen=True)
class _Sources:
    """What a save may hard-link to (see `CheckpointStore._share_sources`)."""

    record: CheckpointRecord
    files: Mapping[tuple[int, str], tuple[str, Mapping[str, Any]]]  # (size, hash) -> file
    damaged: set[tuple[int, int]]  # (st_dev, st_ino) of files of damaged checkpoints


_PLAIN = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]*$")


def is_run_entry(name: str) -> bool:
    """Whether `name` (an entry of a directory) is one tfckpt puts in a run
    directory: a checkpoint, a save or deletion in progress, a damage marker
    or the lock."""
    if _NAME.match(name) or name == ".lock":
        return True
    rest = next((name[len(p) :] for p in (_TMP, _TRASH, _DAMAGED) if name.startswith(p)), None)
    return rest is not None and rest.startswith("ckpt-")


def _plain_name(name: object) -> bool:
    """A file name in the checkpoint's directory itself: no path, no `..`."""
    return isinstance(name, str) and bool(_PLAIN.match(name)) and ".." not in name


def _record(name: str, seq: int, path: str, manifest: Mapping[str, Any]) -> CheckpointRecord:
    """The record of a checkpoint just committed with `manifest`."""
    return CheckpointRecord(
        name=name,
        seq=seq,
        step=int(manifest["step"]),
        epoch=int(manifest["epoch"]),
        batch=int(manifest["batch"]),
        metrics=dict(manifest["metrics"]),
        time=float(manifest["time"]),
        path=path,
        size=sum(int(f["size"]) for f in manifest["files"].values()),
        manifest=manifest,
    )


_SHARD = re.compile(rf"^{PREFIX}\.data-(\d+)-of-(\d+)$")
# errnos of a filesystem without hard links (or across devices)
_NO_LINKS = {errno.EPERM, errno.EXDEV, errno.ENOTSUP, errno.EOPNOTSUPP}


def _check_tf_files(tmp: str, files: list[str]) -> list[str]:
    """The files to commit; raises unless `files` (in `tmp`) hold TF's index and
    every data shard it names: a sharded save that failed leaves its parts in
    `<prefix>_temp/` and no index or shards, and must never be committed. A
    complete save whose `<prefix>_temp/` TF could not remove (an I/O error on
    its cleanup) is committed without it."""
    shards = [m for f in files if (m := _SHARD.match(f))]
    counts = {int(m.group(2)) for m in shards}
    found = {int(m.group(1)) for m in shards}
    problems = []
    if f"{PREFIX}.index" not in files:
        problems.append(f"no {PREFIX}.index")
    if len(counts) != 1 or found != set(range(counts.pop())):
        problems.append(f"data shards {sorted(m.group(0) for m in shards)} are not a full set")
    dirs = [f for f in files if tf.io.gfile.isdir(_fs.join(tmp, f))]
    if not problems and dirs == [f"{PREFIX}_temp"]:
        _remove_quietly(_fs.join(tmp, dirs[0]))  # TF's merged parts: garbage
        if not tf.io.gfile.exists(_fs.join(tmp, dirs[0])):
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


def _remove_quietly(path: str) -> None:
    try:
        if tf.io.gfile.isdir(path):
            tf.io.gfile.rmtree(path)
        elif tf.io.gfile.exists(path):
            tf.io.gfile.remove(path)
    except tf.errors.OpError:
        pass


def _no_op(path: str) -> None:
    pass


def _manifest_checksum(manifest: Mapping[str, Any]) -> int:
    body = {k: v for k, v in manifest.items() if k != "checksum"}
    return zlib.crc32(json.dumps(body, sort_keys=True).encode())


def _os_error_text(e: BaseException) -> str:
    """TF's error text without the graph-function noise around it."""
    text = getattr(e, "message", None) or str(e)
    text = re.sub(r"\{\{function_node [^}]*\}\}\s*", "", text)
    return re.sub(r"\s*\[Op:\w+\]\s*$", "", text).rstrip(". ")


def _mb(n: int) -> str:
    return f"{n / 2**20:.1f} MiB"


def now() -> float:
    return time.time()
