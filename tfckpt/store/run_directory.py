"""A run directory as a reader sees it: its committed checkpoints, the
directories that are not, and the verification of a checkpoint's files.

The only thing it writes is a damage marker (`mark_damaged`), so that a
checkpoint found corrupted is never taken for a checkpoint again. Writing
checkpoints is `store.CheckpointStore`'s job.
"""

from __future__ import annotations

import os
from typing import Any

import tensorflow as tf

from tfckpt.errors import CheckpointReadError
from tfckpt.store import fs, tf_checkpoint
from tfckpt.store.layout import (
    CHECKPOINT_NAME,
    DAMAGED,
    LEFTOVER,
    MANIFEST,
    MANIFEST_LIMIT,
    PREFIX,
    STATE_TMP,
    CheckpointRecord,
    Corrupt,
    Problem,
    check_manifest,
    os_error_text,
    record_from_manifest,
)

_RESCANS = 5  # listings a scan takes at most while the writer deletes under it


class RunDirectory:
    """Reads the checkpoints of the run directory `directory`."""

    def __init__(self, directory: str):
        self.directory = directory

    def _path(self, *names: str) -> str:
        return fs.join(self.directory, *names)

    def entries(self) -> list[str]:
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
        entries = self.entries()
        for _ in range(_RESCANS):
            records, problems, gone = self._scan(entries)
            if not gone:
                break
            # Some were deleted meanwhile: the listing may predate the writer's
            # newest commit (it commits, then deletes), so list again.
            again = self.entries()
            if again == entries:
                break
            entries = again
        return records, problems

    def _scan(self, entries: list[str]) -> tuple[list[CheckpointRecord], list[Problem], bool]:
        records, problems, gone = [], [], False
        names = sorted((int(m.group(1)), e) for e in entries if (m := CHECKPOINT_NAME.match(e)))
        damaged = {e[len(DAMAGED) :] for e in entries if e.startswith(DAMAGED)}
        for seq, name in names:
            if name in damaged:
                problems.append(Problem(name, self._damage_reason(name)))
                continue
            try:
                kind = fs.entry_kind(self._path(name))
            except tf.errors.OpError as e:
                raise self.read_error(e, name) from e
            if kind not in ("directory", None):
                # Never followed: a link could lead into another run.
                problems.append(Problem(name, f"{kind}, not a checkpoint directory: not read"))
                continue
            try:
                record = self._load(name, seq)
                reason = self.check_sizes(record)
            except Corrupt as e:
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
        path = self._path(name) if fs.is_local(self.directory) else self._path(name, MANIFEST)
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
            manifest = fs.parse_json(fs.read_bytes(path, MANIFEST_LIMIT))
        except tf.errors.NotFoundError:
            raise Corrupt("no manifest.json (not committed)") from None
        except tf.errors.OpError as e:
            raise self.read_error(e) from e
        except ValueError as e:  # NotRegularFile too: a link, a FIFO, too large
            raise Corrupt(f"unreadable manifest.json ({e})") from None
        check_manifest(name, seq, manifest)
        return record_from_manifest(name, seq, self._path(name, PREFIX), manifest)

    def check_sizes(self, record: CheckpointRecord) -> str | None:
        for fname, entry in record.manifest["files"].items():
            try:
                actual = self._measure(record, fname, fs.size)
            except fs.NotRegularFile as e:
                return str(e)
            if actual is None:
                return f"missing file {fname}"
            if actual != entry["size"]:
                return f"{fname} has {actual} bytes, manifest says {entry['size']}"
        return None

    def _measure(self, record: CheckpointRecord, fname: str, measure: Any) -> Any:
        """`measure(path)` of one of `record`'s files; `None` when it is
        missing. An I/O error is raised as a read error (it is no damage)."""
        try:
            return measure(self._path(record.name, fname))
        except tf.errors.NotFoundError:
            return None
        except tf.errors.OpError as e:
            raise self.read_error(e) from e

    def _damage_reason(self, name: str) -> str:
        try:
            reason = fs.read_bytes(self._path(DAMAGED + name), 4096).decode(errors="replace")
        except (tf.errors.OpError, ValueError):
            reason = "?"
        return f"found damaged earlier: {reason}"

    def mark_damaged(self, name: str, reason: str) -> None:
        """Records that `name` failed verification: it no longer counts as a
        checkpoint (nor as the newest one), and retention never deletes it."""
        try:
            fs.write_new_file(self._path(DAMAGED + name), reason.encode())
        except (OSError, ValueError, tf.errors.OpError):
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
        reason = self.check_sizes(record)
        if reason:
            return reason
        tensors_to_check = False
        for fname, entry in record.manifest["files"].items():
            if ".data-" in fname and (not data or "crc32" not in entry):
                tensors_to_check = tensors_to_check or data
                continue
            if "crc32" not in entry:  # tfckpt writes one: someone else's manifest
                return f"the manifest has no checksum of {fname}"
            crc = self._measure(record, fname, fs.crc32)
            if crc is None:
                return f"missing file {fname}"
            if crc != entry["crc32"]:
                return f"{fname} does not match its checksum (corrupted)"
        if not tensors_to_check:
            return None
        reason = self._check_tensors(record)
        return reason and reason + self._shared_damage(record)

    def _check_tensors(self, record: CheckpointRecord) -> str | None:
        """Reads every tensor of `record` through TF (CRC32C per tensor)."""
        try:
            reader = tf.compat.v1.train.NewCheckpointReader(record.path)
            for key in sorted(reader.get_variable_to_shape_map()):
                reader.get_tensor(key)
        except (tf.errors.OpError, RuntimeError, ValueError) as e:
            # (NotFound included: the sizes of every file were just checked.)
            if tf_checkpoint.is_damage(e):
                return f"a data shard does not match its checksums (corrupted): {os_error_text(e)}"
            raise self.read_error(e, record.name) from e
        return None

    def read_error(self, e: BaseException | str, name: str | None = None) -> CheckpointReadError:
        """An I/O error while reading the run directory (or checkpoint `name`
        in it): not damage."""
        what = f"checkpoint {name} in {self.directory!r}" if name else f"{self.directory!r}"
        return CheckpointReadError(
            f"Cannot read {what}: {os_error_text(e)}. Nothing was changed; reading "
            "again may succeed."
        )

    def is_committed(self, record: CheckpointRecord) -> bool:
        """Whether `record` is still in place (has its manifest); `True` when
        that cannot be told."""
        try:
            return tf.io.gfile.exists(self._path(record.name, MANIFEST))
        except tf.errors.OpError:
            return True

    def leftovers(self) -> list[str]:
        return [e for e in self.entries() if LEFTOVER.match(e) or STATE_TMP.match(e)]

    def shared_bytes(self, record: CheckpointRecord) -> int:
        """Bytes of `record`'s files that are hard-linked (shared with other
        checkpoints, see `share_files`): deleting `record` does not free them
        while another checkpoint links them."""
        shared = 0
        for fname, entry in record.manifest["files"].items():
            links = fs.link_count(self._path(record.name, fname))
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
                    st = os.stat(fs.local_path(path)) if fs.is_local(path) else None
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

    def _shared_damage(self, record: CheckpointRecord) -> str:
        """Which hashed data shards of `record` are damaged, and which other
        checkpoints share them (the same file, so the same damage)."""
        notes = []
        for fname, entry in sorted(record.manifest["files"].items()):
            path = self._path(record.name, fname)
            try:
                if "xxh3" not in entry or fs.content_hash(path) == entry["xxh3"]:
                    continue
                inode = os.stat(path)
            except (OSError, tf.errors.OpError):
                continue
            sharers = []
            for other in self.entries():
                if other == record.name or not CHECKPOINT_NAME.match(other):
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
