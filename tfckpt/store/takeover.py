"""What a writer does when it takes a run directory: takes the lock, removes
what interrupted saves left, clears the finished marker (training goes on, so
watchers follow on), frees dead readers' pins and repairs TF's pointer file."""

from __future__ import annotations

import dataclasses
import warnings

import tensorflow as tf

from tfckpt.errors import CheckpointError, CheckpointWriteError
from tfckpt.store import fs
from tfckpt.store.checkpoint_store import CheckpointStore
from tfckpt.store.finished import clear_finished, is_finished
from tfckpt.store.layout import CheckpointRecord
from tfckpt.store.lock import DirectoryLock
from tfckpt.store.pins import remove_stale as remove_stale_pins


@dataclasses.dataclass
class Takeover:
    """A run directory just taken by its writer."""

    lock: DirectoryLock
    records: list[CheckpointRecord]  # its committed checkpoints, oldest first
    was_finished: bool  # its last writer had ended normally


def take(store: CheckpointStore, *, fsync: bool = True, owner: str = "") -> Takeover:
    """Takes `store`'s run directory (creating it) for writing; raises
    `DirectoryLockedError` when another writer holds it, in another process
    or in this one (`owner` says who this writer is, for that error)."""
    directory = store.directory
    try:
        fs.makedirs(directory, fsync=fsync)
        lock = DirectoryLock(directory, exclusive=True, owner=owner)
    except (OSError, tf.errors.OpError) as e:
        raise CheckpointError(
            f"Cannot write checkpoints to {directory!r}: {getattr(e, 'message', e)}"
        ) from e
    try:
        store.remove_leftovers()
        was_finished = is_finished(directory)
        clear_finished(directory)
        remove_stale_pins(directory)
        records = store.scan()[0]
        if records and not store.pointer_is_current(records):
            # TF's state file is a derived pointer: repair it from the manifests.
            try:
                store.write_pointer(records)
            except CheckpointWriteError as e:
                # tfckpt reads the manifests, not this file: training can go on.
                warnings.warn(f"tfckpt: {e}", stacklevel=3)
    except BaseException:
        lock.release()
        raise
    return Takeover(lock, records, was_finished)
