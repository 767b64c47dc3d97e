"""The parts of saving and restoring that involve every worker of a
multi-worker strategy (`tf.distribute.MultiWorkerMirroredStrategy`)."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable
from typing import Any

import tensorflow as tf

from tfckpt.errors import CheckpointError
from tfckpt.store.layout import CheckpointRecord


class Workers:
    """This process's place among the workers of `strategy`: whether there
    are several, whether it is the chief, and what they must do together."""

    def __init__(self, strategy: Any):
        self.strategy = strategy
        in_mode = getattr(strategy.extended, "_in_multi_worker_mode", None)
        self.multi = bool(in_mode()) if callable(in_mode) else False
        self.is_chief = bool(strategy.extended.should_checkpoint)
        self._sum: Any = None  # the all-reduce of their agreements

    def write_elsewhere(self, checkpoint: tf.train.Checkpoint) -> None:
        """A non-chief worker's part in a save: TF may need every worker for
        it (collectives), but only the chief's files count."""
        scratch = tempfile.mkdtemp(prefix="tfckpt-worker-")
        try:
            checkpoint.write(os.path.join(scratch, "ckpt"))
        finally:
            shutil.rmtree(scratch, ignore_errors=True)

    def sum(self, values: list[int]) -> list[int]:
        """Sums `values` over every replica of every worker (all must call)."""
        if self._sum is None:
            strategy = self.strategy

            @tf.function
            def all_sum(local):
                per_replica = strategy.run(tf.identity, args=(local,))
                return strategy.reduce(tf.distribute.ReduceOp.SUM, per_replica, axis=None)

            self._sum = all_sum
        total = self._sum(tf.constant(values, dtype=tf.int64))
        return [int(v) for v in total.numpy()]

    def agree_on(
        self,
        pick: Callable[[], CheckpointRecord | None],
        find: Callable[[int], CheckpointRecord | None],
        directory: str,
    ) -> CheckpointRecord | None:
        """The checkpoint every worker restores: the chief's `pick()`.

        Reading mirrored variables under a multi-worker strategy runs
        collectives, so every worker reads the same checkpoint at the same
        time: the chief picks, all workers learn its seq (or that the chief
        failed), and each finds the record by seq (`find`)."""
        picked, error = None, None
        if self.is_chief:
            try:
                picked = pick()
            except Exception as e:
                error = e
        chief = int(self.is_chief)
        status = 2 if error is not None else int(picked is not None)
        total, seq, chiefs = self.sum(
            [chief * status, chief * (picked.seq if picked else 0), chief]
        )
        chiefs = max(chiefs, 1)
        status, seq = total // chiefs, seq // chiefs
        if error is not None:
            raise error
        if status == 2:
            raise CheckpointError(
                f"The chief worker could not pick a checkpoint of {directory!r} to "
                "restore (its error says why); no worker restored anything."
            )
        if status == 0:
            return None
        record = picked or find(seq)
        if record is None:
            raise CheckpointError(
                f"The chief restores checkpoint #{seq} of {directory!r}, which this "
                "worker cannot see: with several workers the run directory must be "
                "on storage they all share (e.g. gs://)."
            )
        return record
