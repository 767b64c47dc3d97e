"""Retention after a commit: deletes the checkpoints a policy does not keep,
and points TF's `checkpoint` file at those it keeps."""

from __future__ import annotations

import warnings
from collections.abc import Sequence

from tfckpt.errors import CheckpointWriteError
from tfckpt.retention import RetentionPolicy
from tfckpt.store.checkpoint_store import CheckpointStore
from tfckpt.store.layout import CheckpointRecord


def apply_retention(
    store: CheckpointStore,
    policy: RetentionPolicy,
    newest: CheckpointRecord,
    superseded: Sequence[CheckpointRecord] = (),
) -> tuple[list[CheckpointRecord], CheckpointWriteError | None]:
    """Deletes what the policy does not keep, and `superseded` (replaced by
    the newest checkpoint, so not counted by the policy either).

    Returns the deleted checkpoints and the error of TF's state file, if
    it could not be written. A checkpoint that cannot be deleted is warned
    about and kept; the others are still deleted."""
    gone = {r.name for r in superseded}
    records = [r for r in store.scan()[0] if r.name not in gone]
    if not records or records[-1].name != newest.name:
        # A listing that does not end with the checkpoint just committed
        # is not one to delete by.
        return [], CheckpointWriteError(
            f"retention skipped: listing {store.directory!r} did not show {newest.name}, "
            "just committed. Nothing was deleted."
        )
    reasons = policy.keep(records)
    reasons[-1] = "latest"  # never delete the newest committed checkpoint
    kept = [r for r, why in zip(records, reasons) if why]
    doomed = [*superseded, *(r for r, why in zip(records, reasons) if not why)]
    try:
        store.write_pointer(kept)
        pointer_error = None
    except CheckpointWriteError as e:
        pointer_error = e  # e.g. a full disk: the deletions may make room
    deleted = []
    for record in doomed:
        try:
            store.delete(record)
        except CheckpointWriteError as e:
            warnings.warn(f"tfckpt: {e}", stacklevel=2)
            if store.is_committed(record):
                continue
        deleted.append(record)
    if pointer_error is not None and deleted:
        try:
            store.write_pointer(kept)
            pointer_error = None
        except CheckpointWriteError as e:
            pointer_error = e
    return deleted, pointer_error
