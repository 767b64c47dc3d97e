"""The local copy of a remote run that reading entry points work on.

`tfckpt.open`, `restore`, `ls`, `info`, `verify`, `watch` and the sidecar
evaluator read a remote run through a cache directory on the local disk
(`$TFCKPT_CACHE`, default `~/.cache/tfckpt`), one per URL, kept equal to the
run's published checkpoints: each is downloaded once, verified, and
committed there with the store's own protocol (equal data files hard-linked
to the cached checkpoint before it); checkpoints no longer published are
deleted from the cache. The cache is a run directory like any other.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import re
import time
from collections.abc import Mapping
from typing import Any

from tfckpt.errors import CheckpointWriteError, DirectoryLockedError
from tfckpt.remote.bucket import Bucket
from tfckpt.remote.progress import TransferProgress
from tfckpt.remote.remote_run import STORE_FIELDS, RemoteRun
from tfckpt.store import fs
from tfckpt.store.checkpoint_store import CheckpointStore
from tfckpt.store.finished import clear_finished, is_finished, mark_finished
from tfckpt.store.layout import MANIFEST, CheckpointRecord, Problem, same_checkpoint
from tfckpt.store.lock import DirectoryLock

_LOCK_WAIT = 60.0  # seconds a sync waits for another sync of the same URL


@dataclasses.dataclass(frozen=True)
class Synced:
    """A cache made equal to a remote run.

    Attributes:
        directory: the local cache directory (a run directory).
        downloaded: checkpoints downloaded by this sync.
        problems: remote checkpoints not cached: an unusable manifest, or
            files that did not verify.
    """

    directory: str
    downloaded: list[CheckpointRecord]
    problems: list[Problem]


def cache_directory(url: str) -> str:
    """The cache directory of `url`: readable, and unique per URL."""
    root = os.environ.get("TFCKPT_CACHE") or os.path.join(
        os.path.expanduser("~"), ".cache", "tfckpt"
    )
    url = url.rstrip("/")
    tail = re.sub(r"[^A-Za-z0-9_.-]+", "-", url.partition("://")[2])[-60:].strip("-.")
    return os.path.join(root, f"{tail or 'run'}-{hashlib.sha256(url.encode()).hexdigest()[:12]}")


def sync(
    url: str,
    storage_options: Mapping[str, Any] | None = None,
    *,
    quiet: bool = True,
    directory: str | None = None,
) -> Synced:
    """Makes the cache of `url` (or `directory`) hold exactly its published
    checkpoints."""
    remote = RemoteRun(Bucket(url, storage_options))
    directory = directory or cache_directory(url)
    fs.makedirs(directory, fsync=False)
    lock = _lock(directory)
    store = CheckpointStore(directory, fsync=False, share_files=True)
    try:
        store.remove_leftovers()
        finished = remote.is_finished()  # first: every checkpoint before it is listed
        records, problems, _ = remote.scan()
        cached = {r.name: r for r in store.scan()[0]}
        wanted = {r.name for r in records}
        for record in cached.values():
            if record.name not in wanted:
                store.delete(record)
        downloaded = []
        for record in records:
            there = cached.get(record.name)
            if there is not None and same_checkpoint(there, record):
                continue
            if there is not None:
                store.delete(there)
            progress = TransferProgress(f"{record.name} <- {url}", record.size, quiet=quiet)
            metadata = {k: v for k, v in record.manifest.items() if k not in STORE_FIELDS}
            try:
                result = remote.fetch(record, store, metadata=metadata, progress=progress)
            except CheckpointWriteError as e:  # e.g. larger than the free space here
                result = f"not cached: {e}"
            if isinstance(result, str):
                if remote.bucket.size(record.name, MANIFEST) is None:
                    progress.done("deleted by the writer meanwhile")
                    continue  # retention's, not damage
                progress.done("damaged, not used")
                problems.append(Problem(record.name, result))
                continue
            progress.done("downloaded and verified")
            downloaded.append(result)
        final = store.scan()[0]
        if final:
            store.write_pointer(final)
        if finished and not is_finished(directory):
            mark_finished(directory)
        elif not finished and is_finished(directory):
            clear_finished(directory)
    finally:
        store.close()
        lock.release()
    return Synced(directory, downloaded, problems)


def _lock(directory: str) -> DirectoryLock:
    deadline = time.monotonic() + _LOCK_WAIT
    while True:
        try:
            return DirectoryLock(directory, exclusive=True)
        except DirectoryLockedError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)
