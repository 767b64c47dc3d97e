"""Restoring a checkpoint of a run directory: the first intact candidate of
a selection, with the checks TF leaves to us, falling back past damaged ones
(the engine behind `Run.restore`, `tfckpt.restore`, the manager's `restore`
and `init_from`)."""

from __future__ import annotations

import warnings
import zipfile
from collections.abc import Callable, Mapping
from typing import Any

import tensorflow as tf

from tfckpt.errors import (
    CheckpointNotFoundError,
    DamagedCheckpointError,
    NoIntactCheckpointError,
)
from tfckpt.store import tf_checkpoint
from tfckpt.store.checkpoint_store import CheckpointStore
from tfckpt.store.layout import CheckpointRecord

# A reader gives up after this many candidates deleted under it (a writer that
# deletes checkpoints faster than they can be read).
_MAX_DELETED_WHILE_READING = 100


class Restorer:
    """Restores checkpoints of `store`'s run directory.

    Args:
        store: the run directory's store.
        select: `select(which, epoch=...)`, the candidates of a selection,
            best first (`Run.select`).
        read_state: reads the state saved with a record (`Run.state`).
    """

    def __init__(
        self,
        store: CheckpointStore,
        select: Callable[..., list[CheckpointRecord]],
        read_state: Callable[[CheckpointRecord], dict[str, Any]],
    ):
        self.store = store
        self.select = select
        self.read_state = read_state
        # (name, seq, time, state) of the checkpoint restored last: its state,
        # read with its variables, is there when retention has deleted it since.
        self.restored: tuple[str, int, float, dict[str, Any]] | None = None

    def restore_into(
        self,
        objects: Mapping[str, Any],
        which: Any = None,
        *,
        epoch: int | None = None,
        strict: bool,
        verify: bool = True,
        mark_damaged: bool = False,
    ) -> CheckpointRecord | None:
        """`Run.restore_into` (see there)."""
        return self._first(
            which,
            epoch,
            lambda record: self._read_into(objects, record, strict=strict, verify=verify),
            mark_damaged=mark_damaged,
        )

    def first_intact(self, which: Any, *, verify: bool = True) -> CheckpointRecord | None:
        """The first candidate of `which` whose manifest, sizes and small-file
        checksums check out, reading no tensor (a multi-worker chief's pick,
        which every worker then restores); damaged ones are marked and
        skipped. `None` for an empty directory."""
        return self._first(
            which,
            None,
            lambda record: self.store.check(record, data=False) if verify else None,
            mark_damaged=True,
        )

    def _first(
        self,
        which: Any,
        epoch: int | None,
        attempt: Callable[[CheckpointRecord], str | None],
        *,
        mark_damaged: bool,
    ) -> CheckpointRecord | None:
        """The first candidate of the selection that `attempt` takes (returns
        `None` for), falling back past damaged ones and past those the
        writer deletes meanwhile."""
        candidates = self.select(which, epoch=epoch)
        problems = self.store.scan()[1]
        if not candidates and not problems:
            return None
        for problem in problems:
            warnings.warn(
                f"tfckpt: skipping {problem.name} in {self.store.directory!r}: "
                f"{problem.reason}. It is left on disk for inspection.",
                stacklevel=5,
            )
        skipped, deleted = [], []
        while candidates:
            record = candidates.pop(0)
            try:
                reason = attempt(record)
            except (tf.errors.OpError, RuntimeError, ValueError):
                if not self.store.vanished(record.name):
                    raise
                reason = "deleted while being read"
            if reason is None:
                return record
            if self.store.vanished(record.name):
                # Deleted meanwhile (the writer's retention): rescan and go on.
                deleted.append(record.name)
                if len(deleted) >= _MAX_DELETED_WHILE_READING:
                    break
                candidates = self._reselect(which, epoch, skipped, deleted)
                continue
            skipped.append(record.name)
            if mark_damaged:
                self.store.mark_damaged(record.name, reason)
            warnings.warn(
                f"tfckpt: skipping {record.name} in {self.store.directory!r}: {reason}. "
                "Falling back to the next intact checkpoint; the damaged one is "
                "left on disk for inspection.",
                stacklevel=5,
            )
        if skipped or problems:
            damaged = skipped + [p.name for p in problems]
            raise NoIntactCheckpointError(
                f"None of the checkpoints selected by {_selection(which, epoch)} in "
                f"{self.store.directory!r} is intact (damaged: {', '.join(damaged)}). "
                "Nothing was deleted; run `tfckpt verify` for details."
            )
        raise CheckpointNotFoundError(
            f"The checkpoints selected by {_selection(which, epoch)} in {self.store.directory!r} "
            f"were deleted by the run's writer (its retention) while they were being read "
            f"({', '.join(deleted)}). Select a checkpoint it keeps, e.g. 'latest'."
        )

    def _read_into(
        self, objects: Mapping[str, Any], record: CheckpointRecord, *, strict: bool, verify: bool
    ) -> str | None:
        """Restores `record` into `objects`; returns what is wrong with it instead
        when its files are damaged."""
        reason = self.store.check(record, data=False) if verify else None
        if reason is not None:
            return reason
        if isinstance(objects, tf.train.Checkpoint):
            readable = objects  # a caller's own root, read as it is
        else:
            model = objects.get("model")
            tf_checkpoint.ensure_built(model, record.manifest.get("build_config"))
            readable = dict(objects)
            if objects.get("optimizer") is None and model is not None:
                readable["model"] = tf_checkpoint.model_only(model)
        tf_checkpoint.build_optimizers(record.path, readable)
        try:
            tf_checkpoint.read(
                record.path,
                readable,
                saved=record.manifest.get("contents"),
                strict=strict,
            )
        except (tf.errors.OpError, RuntimeError) as e:
            # TF's per-tensor CRC32C check (DataLossError, or a bare
            # OpError/RuntimeError from inside a restore function).
            text = getattr(e, "message", None) or str(e)
            if not tf_checkpoint.is_damage(e):
                if isinstance(e, tf.errors.OpError) and not self.store.vanished(record.name):
                    # An I/O or permission error, not damage: nothing is marked.
                    raise self.store.read_error(e, record.name) from e
                raise
            return f"unreadable data ({text.strip()})"
        # The saver's state goes with the variables: read it now, while the
        # checkpoint is surely there (the writer may delete it right after).
        try:
            state = self.read_state(record)
        except DamagedCheckpointError as e:
            return str(e)  # what a resume needs besides the variables: damage too
        except (ValueError, KeyError, TypeError, OSError, tf.errors.OpError, zipfile.BadZipFile):
            if self.store.vanished(record.name):
                raise  # deleted by the writer meanwhile: `_first` picks again
            self.restored = None  # `state()` raises it when it is asked for
        else:
            self.restored = (record.name, record.seq, record.time, state)
        return None

    def _reselect(
        self, which: Any, epoch: int | None, skipped: list[str], deleted: list[str]
    ) -> list:
        try:
            fresh = self.select(which, epoch=epoch)
        except CheckpointNotFoundError:
            return []
        back = [r.name for r in fresh if r.name in deleted]
        if back:  # it was not deleted: what failed was reading it
            raise self.store.read_error(f"{back[0]} could not be read, and is still there")
        return [r for r in fresh if r.name not in skipped]


def _selection(which: Any, epoch: int | None) -> str:
    return (
        f"epoch={epoch!r}"
        if epoch is not None
        else f"which={'latest' if which is None else which!r}"
    )
