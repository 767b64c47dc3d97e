"""Observers: code of yours called after each checkpoint is committed and
after each one retention deletes."""

from __future__ import annotations

import os
import warnings
from typing import Any

import tensorflow as tf
from tensorflow.core.framework import summary_pb2

from tfckpt.store.layout import CheckpointRecord


def _plugin(name: str) -> summary_pb2.SummaryMetadata:
    metadata = summary_pb2.SummaryMetadata()
    metadata.plugin_data.plugin_name = name
    return metadata


class CheckpointObserver:
    """Called with the record of each committed and each deleted checkpoint.

    Subclass it and override either method; pass instances to
    `CheckpointCallback(..., observers=[...])` or
    `CheckpointManager(..., observers=[...])`.

    Example:

    ```python
    class Notify(tfckpt.CheckpointObserver):
        def on_commit(self, record):
            print("saved", record.name, record.metrics)

        def on_delete(self, record):
            print("deleted", record.name)
    ```

    `on_commit` runs once the checkpoint is durable, before retention;
    `on_delete` runs after retention removed a checkpoint. With
    `async_save=True` both run in the background save thread. An exception in
    an observer is reported as a warning: the checkpoint is kept, retention
    still runs, and training goes on.
    """

    def set_model(self, model: Any) -> None:
        """Called with the model the manager saves, when the manager is
        created (the callback creates one at the start of each `fit`)."""

    def on_commit(self, record: CheckpointRecord) -> None:
        """After `record` is committed."""

    def on_delete(self, record: CheckpointRecord) -> None:
        """After retention deleted `record`."""


class TensorBoardObserver(CheckpointObserver):
    """Writes each checkpoint's metrics, and a line per save and deletion, to
    TensorBoard (`tf.summary`), at the checkpoint's step.

    Example:

    ```python
    tb = tfckpt.TensorBoardObserver("runs/exp1/tensorboard")
    model.fit(..., callbacks=[tfckpt.CheckpointCallback("runs/exp1", observers=[tb])])
    ```

    Args:
        logdir: directory of the summary files (any `tf.io.gfile` path); keep
            it out of the run directory's checkpoints, e.g. a subfolder.
    """

    def __init__(self, logdir: str):
        if not isinstance(logdir, (str, os.PathLike)) or not os.fspath(logdir):
            raise ValueError(f"`logdir` must be a non-empty path. Received: logdir={logdir!r}")
        self.logdir = os.fspath(logdir)
        self._writer: Any = None
        self._step = 0  # the newest committed step

    def _write(self, record: CheckpointRecord, text: str, scalars: bool) -> None:
        if self._writer is None:
            self._writer = tf.summary.create_file_writer(self.logdir)
        # A deletion is written at the newest step, not the deleted one's:
        # TensorBoard drops the records of a tag at or after a step that goes
        # back in time.
        self._step = max(self._step, record.step) if scalars else self._step
        step = record.step if scalars else self._step
        # tf.summary.write with TensorBoard's plugin tags: what tf.summary.scalar
        # and .text write, without needing the tensorboard package installed.
        with self._writer.as_default(step=step):
            if scalars:
                for name, value in record.metrics.items():
                    if isinstance(value, (int, float)) and not isinstance(value, bool):
                        tf.summary.write(
                            f"checkpoint/{name}",
                            tf.constant(float(value), tf.float32),
                            metadata=_plugin("scalars"),
                        )
            tf.summary.write("checkpoint/events", tf.constant(text), metadata=_plugin("text"))
        self._writer.flush()

    def on_commit(self, record: CheckpointRecord) -> None:
        where = f"epoch {record.epoch}" + (f" batch {record.batch}" if record.batch else "")
        self._write(record, f"saved {record.name} ({where}, step {record.step})", scalars=True)

    def on_delete(self, record: CheckpointRecord) -> None:
        self._write(record, f"deleted {record.name} (retention)", scalars=False)


def notify(observers: list[CheckpointObserver], event: str, record: CheckpointRecord) -> None:
    """Calls `event` ("on_commit" or "on_delete") of each observer; an
    observer's exception is a warning, never the caller's error."""
    for observer in list(observers):
        try:
            getattr(observer, event)(record)
        except Exception as e:
            warnings.warn(
                f"tfckpt: observer {observer!r} failed in {event}({record.name}): "
                f"{type(e).__name__}: {e}. The checkpoint is unaffected.",
                stacklevel=3,
            )


def bind_model(observers: list[CheckpointObserver], model: Any) -> None:
    """Calls `set_model(model)` of each observer that has one; an error is a
    warning, as in `notify`."""
    for observer in list(observers):
        set_model = getattr(observer, "set_model", None)
        if not callable(set_model):
            continue
        try:
            set_model(model)
        except Exception as e:
            warnings.warn(
                f"tfckpt: observer {observer!r} failed in set_model: "
                f"{type(e).__name__}: {e}. The checkpoints are unaffected.",
                stacklevel=3,
            )
