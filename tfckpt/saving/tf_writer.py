"""Writing a checkpoint's TF files, in the caller's thread or, with async
saves, from a copy of the state in host memory while training goes on; and the
background thread that finishes async saves, one at a time."""

from __future__ import annotations

import concurrent.futures
from collections.abc import Callable, Sequence
from typing import Any

import tensorflow as tf

from tfckpt.saving import async_fix
from tfckpt.store import gc_pause, shards, tf_checkpoint
from tfckpt.store.background import in_foreground, lower_thread_priority
from tfckpt.store.checkpoint_store import CheckpointStore
from tfckpt.store.layout import PendingCheckpoint


def _same_objects(a: Sequence[Any], b: Sequence[Any] | None) -> bool:
    return b is not None and len(a) == len(b) and all(x is y for x, y in zip(a, b))


# The longest a background step (an async write, making the host twins)
# holds off Python's collector: past this, slow storage, not TF's objects, is
# what it waits for.
BACKGROUND_HOLD_SECONDS = 30.0


def _make_twins(variables: list[Any], held: gc_pause.Hold) -> None:
    try:
        async_fix.prepare_twins(variables)
    finally:
        held.release()  # taken by `TFWriter.prepare`


class TFWriter:
    """Writes the TF files of checkpoints of `objects()`.

    Args:
        store: where the checkpoints go.
        objects: returns the `tf.train.Checkpoint` children (model, optimizer).
        async_save: `write` returns once TF has copied the state; `submit`
            runs the rest in a background thread.
        incremental: split tensors into data files that later saves can share.
    """

    def __init__(
        self,
        store: CheckpointStore,
        objects: Callable[[], dict[str, Any]],
        *,
        async_save: bool,
        incremental: bool,
    ):
        self._store = store
        self._objects = objects
        self.async_save = async_save
        self.incremental = incremental
        self._checkpoint: tf.train.Checkpoint | None = None
        # The variables `_checkpoint`'s async helper copies: TF fixes them at
        # its first write and reads any variable created later live, from its
        # thread. `None`: start a fresh tf.train.Checkpoint at the next save.
        self._copied: list[Any] | None = None
        self._executor: concurrent.futures.ThreadPoolExecutor | None = None
        self._inflight: concurrent.futures.Future | None = None
        # Host twins made in the background before the first async write
        # (`prepare`), the variables they were made for, and its hold on
        # Python's collector (`gc_pause`).
        self._preparing: concurrent.futures.Future | None = None
        self._prepared_for: list[Any] = []
        self._prepare_hold: gc_pause.Hold | None = None
        # Holds of async writes in flight, by id of their PendingCheckpoint:
        # from the copy until TF's background write ends (`written`).
        self._write_holds: dict[int, gc_pause.Hold] = {}
        if async_save:
            async_fix.enable()

    def checkpoint(self, variables: list[Any]) -> tf.train.Checkpoint:
        """The `tf.train.Checkpoint` that writes `variables` (the model's and
        the optimizer's, as they are now)."""
        if self._checkpoint is None or (
            self.async_save and not _same_objects(variables, self._copied)
        ):
            # Variables created since the async helper's first write (optimizer
            # slots built by the first step, a new layer or optimizer) would be
            # read live while training goes on: a new helper copies them all.
            if self._checkpoint is not None:
                async_fix.retire(self._checkpoint)  # its thread and host copies
            self._checkpoint = tf_checkpoint.checkpoint_for(self._objects())
            self._copied = variables
        return self._checkpoint

    def prepare(self, variables: list[Any]) -> None:
        """Async: starts making the host copies of `variables` in the
        background save thread, so that the first write only fills them."""
        if not self.async_save or self._preparing is not None or not variables:
            return
        self._prepared_for = list(variables)
        # Thousands of new objects: no collection may start in that thread
        # (one there took 8 s at 6,002 variables). Released once they exist.
        held = self._prepare_hold = gc_pause.hold(timeout=BACKGROUND_HOLD_SECONDS)
        try:
            self._preparing = self._background().submit(_make_twins, self._prepared_for, held)
        except BaseException:
            held.release()
            raise

    def _prepared(self) -> None:
        """Waits for `prepare`'s twins (a failure to make them only means the
        write makes them itself)."""
        if self._preparing is None:
            return
        preparing, self._preparing = self._preparing, None
        try:
            preparing.result()
        except Exception:
            pass

    def write(self, pending: PendingCheckpoint, variables: list[Any]) -> None:
        """Writes the TF files into `pending` (async: starts writing them)."""
        self._prepared()
        checkpoint = self.checkpoint(variables)
        with self._store.guard(pending), in_foreground():
            if self.async_save:
                # Blocks only while TF copies the variables to host memory.
                options = shards.ASYNC_OPTIONS if self.incremental else shards.ASYNC_FULL_OPTIONS
                # Until `written`: TF's thread makes the objects.
                held = gc_pause.hold(timeout=BACKGROUND_HOLD_SECONDS)
                self._write_holds[id(pending)] = held
                try:
                    checkpoint.write(pending.prefix, options=options)
                except BaseException:
                    self._write_holds.pop(id(pending), None)
                    held.release()
                    raise
                async_fix.copy_eagerly(checkpoint)  # no trace at the next write
                if self._prepared_for:  # the twins no write took (variables since dropped)
                    async_fix.drop_prepared(self._prepared_for)
                    self._prepared_for = []
            else:
                with gc_pause.paused():
                    if self.incremental:
                        checkpoint.write(pending.prefix, options=shards.OPTIONS)
                    else:
                        checkpoint.write(pending.prefix)

    def written(self, pending: PendingCheckpoint) -> None:
        """Waits for TF's background write into `pending`; raises its error."""
        try:
            with self._store.guard(pending):
                self._checkpoint.sync()
                # TF keeps a failed write's error for the next write(): take
                # it now, for this checkpoint, and never reuse that helper.
                error = async_fix.take_write_error(self._checkpoint)
                if error is not None:
                    self._copied = None
                    raise error
        finally:
            held = self._write_holds.pop(id(pending), None)
            if held is not None:
                held.release()

    def submit(self, finish: Callable[..., Any], *args: Any) -> None:
        """Runs `finish(*args)` in the background save thread."""
        self._inflight = self._background().submit(finish, *args)

    def _background(self) -> concurrent.futures.ThreadPoolExecutor:
        if self._executor is None:
            self._executor = concurrent.futures.ThreadPoolExecutor(
                max_workers=1,
                thread_name_prefix="tfckpt-save",
                initializer=lower_thread_priority,  # yields to training
            )
        return self._executor

    def wait(self) -> Any:
        """The result of the save in flight (`None` when there is none);
        raises its error."""
        if self._inflight is None:
            return None
        future, self._inflight = self._inflight, None
        return future.result()

    def close(self) -> None:
        """Stops the background thread and frees TF's async helper."""
        try:
            if self._executor is not None:
                self._executor.shutdown(wait=True)
                self._executor = None
        finally:
            # Whatever stopped the shutdown (a second Ctrl-C), the collector
            # is not left off: holds of a write whose `written` never ran, or
            # of twins never made.
            for held in [*self._write_holds.values(), self._prepare_hold]:
                if held is not None:
                    held.release()
            self._write_holds.clear()
            self._preparing = None
            if self._prepared_for:
                async_fix.drop_prepared(self._prepared_for)
                self._prepared_for = []
        if self._checkpoint is not None:
            # TF keeps an async helper (thread, host copies) until exit.
            async_fix.retire(self._checkpoint)
            self._copied = None
