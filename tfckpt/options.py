"""The checks of the arguments that the callback, the manager and `init_from`
share: each says what is wrong, what is allowed and what was received."""

from __future__ import annotations

import math
import os
from typing import Any

import keras
import tensorflow as tf

from tfckpt import retention as _retention
from tfckpt.errors import CheckpointReadError
from tfckpt.observers import CheckpointObserver
from tfckpt.store import CheckpointRecord


def check_backend() -> None:
    if keras.backend.backend() != "tensorflow":
        raise RuntimeError(
            "tfckpt needs Keras's TensorFlow backend, but Keras is using "
            f"{keras.backend.backend()!r}. Set the environment variable "
            "KERAS_BACKEND=tensorflow before importing keras."
        )


def parse_source(source: Any) -> tuple[str, Any, int | None]:
    """`"DIR@which"` (or a record) as (directory, which, epoch) for `Run.select`."""
    if isinstance(source, CheckpointRecord):
        return os.path.dirname(source.directory), source.name, None
    if not isinstance(source, (str, os.PathLike)) or not os.fspath(source):
        raise ValueError(
            "`init_from` must be 'DIR', 'DIR@best', 'DIR@latest', 'DIR@STEP', "
            f"'DIR@epoch=N', 'DIR@ckpt-NNNNNN' or a CheckpointRecord. Received: {source!r}"
        )
    text = os.fspath(source)
    directory, at, selector = text.rpartition("@")
    if not at or tf.io.gfile.isdir(text):  # a run directory may have "@" in its name
        return text, "latest", None
    if selector in ("best", "latest") or selector.startswith("ckpt-"):
        return directory, selector, None
    if selector.isdigit():
        return directory, int(selector), None
    if selector.startswith("epoch=") and selector[6:].isdigit():
        return directory, None, int(selector[6:])
    raise ValueError(
        f"`init_from`: cannot read the selection {selector!r} in {text!r}. Allowed after "
        "'@': best, latest, a step (e.g. 1200), epoch=N, or a checkpoint name (ckpt-000007). "
        "A directory whose name has an '@' in it: add '@latest'."
    )


def validate_observers(observers: Any) -> list[CheckpointObserver]:
    observers = list(observers or [])
    for observer in observers:
        if not (
            callable(getattr(observer, "on_commit", None))
            and callable(getattr(observer, "on_delete", None))
        ):
            raise TypeError(
                "`observers` must be a list of tfckpt.CheckpointObserver (objects with "
                f"on_commit(record) and on_delete(record) methods). Received: {observer!r}"
            )
    return observers


def _is_count(value: object, minimum: int) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= minimum


def validate_options(
    *,
    directory: object,
    monitor: object,
    keep_last: object,
    keep_best: object,
    keep_every_n_epochs: object,
    keep_every_n_hours: object,
    retention: object = None,
) -> None:
    """Checks the arguments the manager and the callback share."""
    if retention is not None and not isinstance(retention, _retention.RetentionPolicy):
        raise TypeError(
            "`retention` must be a tfckpt.retention.RetentionPolicy (an object with "
            f"a `keep(checkpoints)` method). Received: retention={retention!r}"
        )
    if not isinstance(directory, (str, os.PathLike)) or not os.fspath(directory):
        raise TypeError(
            "`directory` must be a non-empty path (str or os.PathLike). "
            f"Received: directory={directory!r}"
        )
    directory = os.fspath(directory)
    try:
        existing = tf.io.gfile.stat(directory)
    except (tf.errors.NotFoundError, tf.errors.FailedPreconditionError):
        existing = None  # missing, or under a file (ENOTDIR): makedirs says why
    except tf.errors.OpError as e:  # not `isdir`: it says False on any error
        raise CheckpointReadError(
            f"Cannot use {directory!r} as the run directory: {getattr(e, 'message', None) or e}."
        ) from e
    if existing is not None and not existing.is_directory:
        raise ValueError(f"`directory` must be a directory, but {directory!r} is an existing file.")
    if monitor is not None and (not isinstance(monitor, str) or not monitor):
        raise ValueError(
            "`monitor` must be a metric name (e.g. 'val_loss') or None. "
            f"Received: monitor={monitor!r}"
        )
    if keep_last is not None and not _is_count(keep_last, 0):
        raise ValueError(
            "`keep_last` must be an integer >= 0, or None to keep all. "
            f"Received: keep_last={keep_last!r}"
        )
    if keep_best is not None and not _is_count(keep_best, 0):
        raise ValueError(f"`keep_best` must be an integer >= 0. Received: keep_best={keep_best!r}")
    if keep_best and monitor is None:
        raise ValueError(
            f"`keep_best={keep_best}` needs a metric to rank checkpoints by, but monitor=None. "
            "Pass monitor='val_loss' (or another metric), or keep_best=0."
        )
    if keep_every_n_epochs is not None and not _is_count(keep_every_n_epochs, 1):
        raise ValueError(
            "`keep_every_n_epochs` must be an integer >= 1 or None. "
            f"Received: keep_every_n_epochs={keep_every_n_epochs!r}"
        )
    if keep_every_n_hours is not None and (
        isinstance(keep_every_n_hours, bool)
        or not isinstance(keep_every_n_hours, (int, float))
        or not keep_every_n_hours > 0
        or not math.isfinite(keep_every_n_hours)
    ):
        raise ValueError(
            "`keep_every_n_hours` must be a positive number or None. "
            f"Received: keep_every_n_hours={keep_every_n_hours!r}"
        )
