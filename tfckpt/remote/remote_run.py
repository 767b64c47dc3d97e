"""A run directory in a bucket: its published checkpoints, and the commit
protocol that puts a checkpoint there or takes one from there.

The layout is a run directory's (`ckpt-NNNNNN/` holding TF's files,
`state.json` and `manifest.json`), written object by object. A checkpoint is
published by its manifest, uploaded last once every other object is in
place and verified (its size, and its MD5 where the store reports one,
against what was read from the local disk, which was itself checked against
the local manifest while it streamed); until then readers ignore it. A
deletion removes the manifest first. So a crash at any point leaves nothing
a reader takes for a checkpoint: at worst a prefix without a manifest, which
the next writer removes. A file whose bytes an earlier published checkpoint
already holds (a frozen backbone of an incremental run) is copied inside
the store rather than sent again.

Downloads go through the local store's commit protocol: into a pending
directory, every file checked against the manifest (sizes, CRC-32, xxh3,
and every tensor through TF where a shard has no hash), then committed.
"""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import json
import os
import re
import zlib
from collections.abc import Callable, Mapping
from typing import Any

import xxhash

from tfckpt.errors import CheckpointError, CheckpointReadError, CheckpointWriteError
from tfckpt.remote.bucket import Bucket
from tfckpt.remote.lease import Lease
from tfckpt.store import fs
from tfckpt.store.checkpoint_store import CheckpointStore
from tfckpt.store.layout import (
    CHECKPOINT_NAME,
    FINISHED,
    MANIFEST,
    MANIFEST_LIMIT,
    PREFIX,
    CheckpointRecord,
    Corrupt,
    Problem,
    check_manifest,
    record_from_manifest,
)

_CHUNK = 8 << 20
_CANONICAL = re.compile(r"^ckpt-[0-9]{6,}$", re.ASCII)
# Manifest fields the local store writes itself when it commits a download.
STORE_FIELDS = ("format", "seq", "prefix", "files", "checksum")

Progress = Callable[[int], None]  # called with the bytes moved since the last call


class LocalDamage(CheckpointError):
    """A local file changed since its checkpoint was committed: not uploaded."""


@dataclasses.dataclass(frozen=True)
class Sent:
    """What publishing one checkpoint moved: bytes sent over the network and
    bytes copied inside the store (files an earlier checkpoint holds)."""

    sent: int
    copied: int


class RemoteRun:
    """The run directory `bucket`. Reading needs no lease; writing (publish,
    delete, cleanup) is for the holder of `lease`."""

    def __init__(self, bucket: Bucket, *, writer: bool = False):
        self.bucket = bucket
        self.url = bucket.url
        # The writer's own published manifests: they never change while it
        # holds the lease, so its listings read each only once.
        self._known: dict[str, bytes] | None = {} if writer else None

    # ---- reading -------------------------------------------------------

    def names(self) -> list[str]:
        """Every `ckpt-*` prefix, published or not, oldest first."""
        try:
            entries = self.bucket.listdir()
        except (OSError, CheckpointError) as e:
            raise self.bucket.read_error(e) from e
        # Only the names tfckpt writes (ckpt- and six ASCII digits): `ckpt-7`
        # beside `ckpt-000007` would be a second checkpoint of the same number.
        names = [e for e in entries if _CANONICAL.match(e)]
        return sorted(names, key=lambda n: int(n[5:]))

    def scan(self) -> tuple[list[CheckpointRecord], list[Problem], list[str]]:
        """Published checkpoints (oldest first), prefixes whose manifest is
        unusable, and prefixes without a manifest (unpublished: an upload
        in progress or one a crash interrupted)."""
        records, problems, unpublished = [], [], []
        for name in self.names():
            seq = int(CHECKPOINT_NAME.match(name).group(1))
            try:
                known = self._known.get(name) if self._known is not None else None
                data = known or self.bucket.read(name, MANIFEST, limit=MANIFEST_LIMIT)
            except ValueError as e:
                problems.append(Problem(name, f"unreadable manifest.json ({e})"))
                continue
            except OSError as e:
                raise self.bucket.read_error(e, name) from e
            if data is None:
                unpublished.append(name)
                continue
            try:
                manifest = fs.parse_json(data)
                check_manifest(name, seq, manifest)
                if not known:
                    self._check_sizes(name, manifest["files"])
            except (ValueError, Corrupt) as e:
                problems.append(Problem(name, str(e)))
                continue
            records.append(
                record_from_manifest(name, seq, self.bucket.url_of(name, PREFIX), manifest)
            )
            if self._known is not None:
                self._known[name] = data
        return records, problems, unpublished

    def _check_sizes(self, name: str, files: Mapping[str, Any]) -> None:
        """Raises `Corrupt` unless every object of `files` is there with its size."""
        try:
            there = self.bucket.sizes(name)
        except OSError as e:
            raise self.bucket.read_error(e, name) from e
        for fname, entry in files.items():
            if fname not in there:
                raise Corrupt(f"missing file {fname}")
            if there[fname] != int(entry["size"]):
                raise Corrupt(f"{fname} has {there[fname]} bytes, manifest says {entry['size']}")

    def checkpoints(self) -> list[CheckpointRecord]:
        return self.scan()[0]

    def is_finished(self) -> bool:
        try:
            return self.bucket.size(FINISHED) is not None
        except OSError as e:
            raise self.bucket.read_error(e) from e

    def fetch(
        self,
        record: CheckpointRecord,
        store: CheckpointStore,
        *,
        same_name: bool = True,
        metadata: Mapping[str, Any] | None = None,
        progress: Progress | None = None,
    ) -> CheckpointRecord | str:
        """Downloads `record` into the local `store` (the caller holds its
        lock), verified, and commits it there under the same name (or, with
        `same_name=False`, the store's next free one). Returns the local
        record, or what is wrong with the remote copy (nothing is committed
        then). A checkpoint larger than the local disk's free space is a
        `CheckpointWriteError`."""
        files: Mapping[str, Any] = record.manifest["files"]
        # Sizes first, from one listing: nothing is downloaded (nor space
        # reserved) for a checkpoint whose objects are not what it says.
        try:
            self._check_sizes(record.name, files)
        except Corrupt as e:
            return f"{record.name} in {self.url}: {e}"
        pending = store.begin(record.size, seq=record.seq if same_name else None)
        with store.guard(pending):
            for fname, entry in files.items():
                problem = self._download(record.name, fname, entry, pending.tmp, progress)
                if problem is not None:
                    store.abort(pending)
                    return problem
            staged = dataclasses.replace(
                record, name=os.path.basename(pending.tmp), path=pending.prefix
            )
        try:
            problem = store.check(staged)
        except BaseException:
            store.abort(pending)
            raise
        if problem is not None:
            store.abort(pending)
            return problem
        if metadata is None:
            metadata = {k: v for k, v in record.manifest.items() if k not in STORE_FIELDS}
        return store.finish(pending, metadata)

    def _download(
        self, name: str, fname: str, entry: Mapping[str, Any], tmp: str, progress: Progress | None
    ) -> str | None:
        want = int(entry["size"])
        crc, xxh, got = 0, xxhash.xxh3_128(), 0
        try:
            src = self.bucket.fs.open(self.bucket.path(name, fname), "rb")
        except FileNotFoundError:
            return f"{name}/{fname} is missing in {self.url}"
        except OSError as e:
            raise self._download_error(name, fname, e) from e
        with src, open(fs.local_path(fs.join(tmp, fname)), "wb") as dst:
            while got <= want:
                try:
                    chunk = src.read(min(_CHUNK, want + 1 - got))
                except OSError as e:
                    raise self._download_error(name, fname, e) from e
                if not chunk:
                    break
                got += len(chunk)
                crc = zlib.crc32(chunk, crc)
                xxh.update(chunk)
                dst.write(chunk)
                if progress is not None:
                    progress(len(chunk))
        if got != want:
            more = "more than " if got > want else ""
            return f"{name}/{fname} has {more}{got} bytes in {self.url}, its manifest says {want}"
        if "crc32" in entry and crc != entry["crc32"]:
            return f"{name}/{fname} in {self.url} does not match its checksum (corrupted)"
        if "xxh3" in entry and xxh.hexdigest() != entry["xxh3"]:
            return f"{name}/{fname} in {self.url} does not match its hash (corrupted)"
        return None

    def _download_error(self, name: str, fname: str, e: BaseException) -> CheckpointReadError:
        return CheckpointReadError(
            f"Cannot download {name}/{fname} from {self.url!r}: {type(e).__name__}: {e}. "
            "Nothing was committed; trying again may succeed."
        )

    # ---- writing (the lease holder) -------------------------------------

    def publish(
        self,
        record: CheckpointRecord,
        lease: Lease,
        *,
        published: list[CheckpointRecord] | None = None,
        progress: Progress | None = None,
    ) -> Sent:
        """Uploads the local checkpoint `record` and publishes it.

        Raises `LocalDamage` when a local file no longer matches its manifest
        (nothing is published), `CheckpointWriteError` when the store does
        not hold what was sent, and the store's own errors (OSError) for the
        caller to retry. A checkpoint of that name already published with
        the same manifest is left as it is."""
        name = record.name
        local_manifest = fs.read_bytes(fs.join(record.directory, MANIFEST), MANIFEST_LIMIT)
        there = self.bucket.read(name, MANIFEST, limit=MANIFEST_LIMIT)
        if there is not None:
            if there == local_manifest:
                return Sent(0, 0)
            raise CheckpointWriteError(
                f"{self.url!r} already has a checkpoint {name} with other content: not "
                "overwritten. One run per remote directory."
            )
        lease.check()
        sources = _sources(published or [])
        sent = copied = 0
        for fname, entry in record.manifest["files"].items():
            source = sources.get((int(entry["size"]), entry.get("xxh3")))
            if source is not None and self._copy_inside(source, name, fname, entry):
                copied += int(entry["size"])
                continue
            md5 = self._upload(record, fname, entry, progress)
            self._verify(name, fname, entry, md5)
            sent += int(entry["size"])
            lease.renew()
        lease.check()  # never publish after losing the lease
        self.bucket.write(name, MANIFEST, data=local_manifest)
        if self.bucket.read(name, MANIFEST, limit=MANIFEST_LIMIT) != local_manifest:
            raise CheckpointWriteError(f"The manifest of {name} in {self.url!r} did not read back")
        if self._known is not None:
            self._known[name] = local_manifest
        return Sent(sent + len(local_manifest), copied)

    def _copy_inside(self, source: str, name: str, fname: str, entry: Mapping[str, Any]) -> bool:
        """Copies an equal file of a published checkpoint within the store;
        `False` where the store cannot (then it is uploaded)."""
        try:
            self.bucket.fs.copy(self.bucket.path(source, fname), self.bucket.path(name, fname))
            return self.bucket.size(name, fname) == int(entry["size"])
        except (OSError, NotImplementedError):
            return False

    def _upload(
        self,
        record: CheckpointRecord,
        fname: str,
        entry: Mapping[str, Any],
        progress: Progress | None,
    ) -> str:
        """Streams one local file up, checking it against the local manifest
        as it goes; returns its MD5 (hex)."""
        path = fs.join(record.directory, fname)
        crc, xxh, md5, total = 0, xxhash.xxh3_128(), hashlib.md5(), 0
        try:
            fd, _ = fs.open_regular(path, os.O_RDONLY)
        except (OSError, ValueError) as e:
            raise LocalDamage(f"{record.name}/{fname} cannot be read locally: {e}") from None
        target = self.bucket.path(record.name, fname)
        with os.fdopen(fd, "rb") as src, self.bucket.fs.open(target, "wb") as dst:
            while chunk := src.read(_CHUNK):
                total += len(chunk)
                crc = zlib.crc32(chunk, crc)
                xxh.update(chunk)
                md5.update(chunk)
                dst.write(chunk)
                if progress is not None:
                    progress(len(chunk))
        damage = _mismatch(fname, entry, total, crc, xxh.hexdigest())
        if damage:
            self.bucket.remove(record.name, fname)  # unpublished either way
            raise LocalDamage(f"{record.name}/{damage}: not uploaded")
        return md5.hexdigest()

    def _verify(self, name: str, fname: str, entry: Mapping[str, Any], md5: str) -> None:
        info = self.bucket.info(name, fname)
        if int(info.get("size", -1)) != int(entry["size"]):
            raise CheckpointWriteError(
                f"{name}/{fname} in {self.url!r} has {info.get('size')} bytes after upload, "
                f"{entry['size']} were sent"
            )
        stored = _stored_md5(info)
        if stored is not None and stored != md5:
            raise CheckpointWriteError(
                f"{name}/{fname} in {self.url!r} does not hold the bytes sent (MD5 differs)"
            )

    def delete(self, record: CheckpointRecord, lease: Lease) -> None:
        """Unpublishes `record` (its manifest first), then removes its objects."""
        lease.check()
        if self._known is not None:
            self._known.pop(record.name, None)
        self.bucket.remove(record.name, MANIFEST)
        self.bucket.remove(record.name)

    def remove_unpublished(self, lease: Lease, unpublished: list[str]) -> None:
        """Removes `unpublished`, the prefixes a `scan` found without a
        manifest (uploads a crash or a failure interrupted)."""
        if unpublished:
            lease.check()
        for name in unpublished:
            self.bucket.remove(name)

    def mark_finished(self, finished: bool) -> None:
        if finished:
            self.bucket.write(FINISHED, data=json.dumps({"finished": True}).encode())
        elif self.bucket.size(FINISHED) is not None:
            self.bucket.remove(FINISHED)


def _sources(published: list[CheckpointRecord]) -> dict[tuple[int, Any], str]:
    """(size, xxh3) of each hashed file of `published` -> the checkpoint
    holding it (the newest one)."""
    found: dict[tuple[int, Any], str] = {}
    for record in published:
        for entry in record.manifest["files"].values():
            if "xxh3" in entry:
                found[(int(entry["size"]), entry["xxh3"])] = record.name
    return found


def _mismatch(fname: str, entry: Mapping[str, Any], size: int, crc: int, xxh: str) -> str | None:
    if size != int(entry["size"]):
        return f"{fname} has {size} bytes, its manifest says {entry['size']}"
    if "crc32" in entry and crc != entry["crc32"]:
        return f"{fname} does not match its checksum (changed on the local disk)"
    if "xxh3" in entry and xxh != entry["xxh3"]:
        return f"{fname} does not match its hash (changed on the local disk)"
    return None


def _stored_md5(info: Mapping[str, Any]) -> str | None:
    """The MD5 (hex) the store reports for an object, where it reports a
    plain one: GCS's `md5Hash`, S3's ETag of a single-part upload."""
    if isinstance(info.get("md5Hash"), str):
        try:
            return base64.b64decode(info["md5Hash"]).hex()
        except ValueError:
            return None
    etag = info.get("ETag") or info.get("etag")
    if isinstance(etag, str):
        etag = etag.strip('"')
        if len(etag) == 32 and all(c in "0123456789abcdef" for c in etag):
            return etag
    return None
