"""`tfckpt.compat.CheckpointManager`: the constructor and members of
`tf.train.CheckpointManager`, with tfckpt's commits, checksums and fallback
underneath."""

from __future__ import annotations

import os
import re
import warnings
from collections.abc import Callable
from typing import Any

import numpy as np
import tensorflow as tf

from tfckpt.manager import CheckpointManager as _Manager
from tfckpt.run import Run
from tfckpt.store import fs, tf_checkpoint

# A TF checkpoint's index file (`<prefix>.index`) directly in the directory.
_TF_INDEX = re.compile(r"^([^.][^/]*)\.index$")


class CheckpointManager:
    """A drop-in for `tf.train.CheckpointManager`: change the import, keep
    the loop.

    Every save is committed atomically with checksums, a restore skips a
    damaged checkpoint for the newest intact one, and the directory is locked
    against a second writer. Checkpoints stay plain TF checkpoints of
    `checkpoint`: the paths `save` returns work with `checkpoint.restore`,
    and `tf.train.latest_checkpoint(directory)` agrees with
    `latest_checkpoint`. Checkpoints that TensorFlow wrote into `directory`
    earlier are listed and restorable, and never deleted.

    The directory is taken for writing (locked against another writer, in
    this process too) by the first `save` or `restore_or_initialize`, and
    freed by `close()` or when the manager is garbage-collected; reading
    `latest_checkpoint` or `checkpoints` takes nothing.

    Example:

    ```python
    checkpoint = tf.train.Checkpoint(model=model, optimizer=optimizer, step=step)
    manager = tfckpt.compat.CheckpointManager(
        checkpoint, "runs/exp1", max_to_keep=3,
        step_counter=step, checkpoint_interval=100,
    )
    manager.restore_or_initialize()
    for batch in data:
        train_step(batch)
        step.assign_add(1)
        manager.save()  # saves every 100 steps
    ```

    Args:
        checkpoint: the `tf.train.Checkpoint` to save and restore.
        directory: where checkpoints go (a `tfckpt` run directory).
        max_to_keep: keep the N newest checkpoints; `None` keeps all.
        keep_checkpoint_every_n_hours: also keep the first checkpoint of
            every N-hour window of wall time.
        checkpoint_name: accepted for compatibility; tfckpt names its
            checkpoints `ckpt-NNNNNN/ckpt` in `directory`.
        step_counter: a `tf.Variable` holding the training step, needed with
            `checkpoint_interval`; it is also the step each checkpoint records.
        checkpoint_interval: save only when at least this many steps passed
            since the last checkpoint (see `save(check_interval=)`).
        init_fn: called by `restore_or_initialize` when there is no
            checkpoint to restore.
        last_checkpoint_step: the step of the last checkpoint saved, where
            the interval starts counting.
    """

    def __init__(
        self,
        checkpoint: tf.train.Checkpoint,
        directory: str | os.PathLike,
        max_to_keep: int | None,
        keep_checkpoint_every_n_hours: float | None = None,
        checkpoint_name: str = "ckpt",
        step_counter: tf.Variable | None = None,
        checkpoint_interval: int | None = None,
        init_fn: Callable[[], Any] | None = None,
        last_checkpoint_step: int | None = None,
    ):
        if not isinstance(checkpoint, tf.train.Checkpoint):
            raise TypeError(
                f"`checkpoint` must be a tf.train.Checkpoint. Received: {type(checkpoint).__name__}"
            )
        if max_to_keep is not None and (
            isinstance(max_to_keep, bool) or not isinstance(max_to_keep, int) or max_to_keep <= 0
        ):
            raise ValueError(
                f"`max_to_keep` must be a positive integer or None. Received: {max_to_keep!r}"
            )
        if not isinstance(checkpoint_name, str) or not checkpoint_name:
            raise ValueError(
                f"`checkpoint_name` must be a non-empty string. Received: {checkpoint_name!r}"
            )
        if checkpoint_interval is not None:
            if step_counter is None:
                raise ValueError(
                    "`step_counter` should be passed if `checkpoint_interval` is not None."
                )
            if (
                isinstance(checkpoint_interval, bool)
                or not isinstance(checkpoint_interval, int)
                or checkpoint_interval <= 0
            ):
                raise ValueError(
                    "`checkpoint_interval` must be a positive integer or None. "
                    f"Received: {checkpoint_interval!r}"
                )
        if init_fn is not None and not callable(init_fn):
            raise ValueError(f"`init_fn` must be callable or None. Received: {init_fn!r}")
        self._checkpoint = checkpoint
        self._directory = os.fspath(directory)
        self._max_to_keep = max_to_keep
        self._step_counter = step_counter
        self._checkpoint_interval = checkpoint_interval
        self._last_checkpoint_step = last_checkpoint_step
        self._init_fn = init_fn
        self._keep_every_n_hours = keep_checkpoint_every_n_hours
        # TF's own checkpoints found in the directory before tfckpt wrote any.
        self._adopted = tf_checkpoints(self._directory)
        self._run = Run(self._directory)
        self._manager: _Manager | None = None
        self._told_options = False

    @property
    def manager(self) -> _Manager:
        """The `tfckpt.CheckpointManager` underneath, taking the directory
        for writing when first used."""
        if self._manager is None:
            self._manager = _Manager(
                self._directory,
                self._checkpoint,
                keep_last=self._max_to_keep,
                keep_every_n_hours=self._keep_every_n_hours,
                # As TF's: a restore leaves the process's random generators alone.
                restore_random_state=False,
            )
        return self._manager

    @property
    def directory(self) -> str:
        return self._directory

    @property
    def checkpoint(self) -> tf.train.Checkpoint:
        """The `tf.train.Checkpoint` this manager saves."""
        return self._checkpoint

    @property
    def checkpoint_interval(self) -> int | None:
        return self._checkpoint_interval

    @property
    def latest_checkpoint(self) -> str | None:
        """The prefix of the newest checkpoint in `directory` (for
        `checkpoint.restore`), `None` when there is none."""
        latest = self._run.latest
        if latest is not None:
            return latest.path
        return self._adopted[-1] if self._adopted else None

    @property
    def checkpoints(self) -> list[str]:
        """The checkpoints, oldest first: TF's own found in the directory,
        then the `max_to_keep` newest of tfckpt's (as TF, not those kept only
        by `keep_checkpoint_every_n_hours`)."""
        paths = [record.path for record in self._run.checkpoints]
        if self._max_to_keep is not None:
            paths = paths[-self._max_to_keep :]
        return [*self._adopted, *paths]

    def save(
        self,
        checkpoint_number: int | tf.Variable | None = None,
        check_interval: bool = True,
        options: tf.train.CheckpointOptions | None = None,
    ) -> str | None:
        """Saves a checkpoint and applies retention; returns its path, or
        `None` when the interval says not yet.

        Args:
            checkpoint_number: recorded as the checkpoint's step (an integer
                or an integer variable); defaults to `step_counter`, else the
                checkpoint's `save_counter` (incremented by every save).
            check_interval: with `checkpoint_interval`, save only when that
                many steps passed since the last checkpoint; `False` saves
                unless a checkpoint was saved at this step.
            options: accepted for compatibility; tfckpt writes every
                checkpoint synchronously with its own options.
        """
        if options is not None and not isinstance(options, tf.train.CheckpointOptions):
            raise ValueError(
                "`options` must be a tf.train.CheckpointOptions or None. "
                f"Received: {type(options).__name__}"
            )
        if options is not None and not self._told_options:
            self._told_options = True
            warnings.warn(
                "tfckpt.compat.CheckpointManager.save(options=...) is ignored: tfckpt "
                "writes each checkpoint synchronously with its own options (for "
                "background saves use tfckpt.CheckpointManager(async_save=True)).",
                stacklevel=2,
            )
        if self._checkpoint_interval is not None:
            current = _integer(self._step_counter)
            if self._last_checkpoint_step is not None:
                if current == self._last_checkpoint_step:
                    return None
                if check_interval and current < (
                    self._last_checkpoint_step + self._checkpoint_interval
                ):
                    return None
            self._last_checkpoint_step = current
        self._checkpoint.save_counter.assign_add(1)
        if checkpoint_number is not None:
            step = _integer(checkpoint_number)
        elif self._step_counter is not None:
            step = _integer(self._step_counter)
        else:
            step = _integer(self._checkpoint.save_counter)
        record = self.manager.save(step)
        return record.path if record is not None else None  # None: a non-chief worker

    def restore_or_initialize(self) -> str | None:
        """Restores the newest intact checkpoint into `checkpoint` and returns
        its path; with none, calls `init_fn` and returns `None`.

        A damaged checkpoint is skipped (with a warning) for the next intact
        one. As with TF's, values of objects created later are restored when
        they are created; use `checkpoint.restore(path)` for a status to
        assert on.
        """
        path = None
        record = self.manager.restore("latest")
        if record is not None:
            path = record.path
        elif self._adopted:
            path = self._restore_adopted()
        if path is None:
            if self._init_fn is not None:
                self._init_fn()
            return None
        if self._checkpoint_interval is not None:
            self._last_checkpoint_step = _integer(self._step_counter)
        return path

    def _restore_adopted(self) -> str | None:
        for prefix in reversed(self._adopted):
            try:
                self._checkpoint.restore(prefix)
            except (tf.errors.OpError, RuntimeError) as e:
                if not tf_checkpoint.is_damage(e):
                    raise
                warnings.warn(
                    f"tfckpt: skipping TF checkpoint {prefix!r}: its data is damaged "
                    f"({getattr(e, 'message', e)}). Trying the one before.",
                    stacklevel=3,
                )
                continue
            return prefix
        return None

    def sync(self) -> None:
        """Waits for the save in flight (tfckpt's saves here are synchronous)."""
        if self._manager is not None:
            self._manager.wait()

    def close(self) -> None:
        """Frees the directory for another writer (also done when the manager
        is garbage-collected)."""
        if self._manager is not None:
            self._manager.close()
            self._manager = None


def _integer(value: Any) -> int:
    return int(np.asarray(value.numpy() if hasattr(value, "numpy") else value))


def tf_checkpoints(directory: str) -> list[str]:
    """Prefixes of the TF checkpoints (`<prefix>.index` files, not links)
    directly in `directory`, oldest first (by modification time)."""
    try:
        names = tf.io.gfile.listdir(directory)
    except tf.errors.NotFoundError:
        return []
    found = []
    for name in names:
        match = _TF_INDEX.match(name.rstrip("/"))
        if match is None:
            continue
        path = fs.join(directory, name)
        if fs.entry_kind(path) != "file":
            continue
        found.append((tf.io.gfile.stat(path).mtime_nsec, name, fs.join(directory, match[1])))
    return [prefix for _, _, prefix in sorted(found)]
