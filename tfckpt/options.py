"""The checks of the arguments that the callback, the manager and `init_from`
share: each says what is wrong, what is allowed and what was received."""

from __future__ import annotations

import dataclasses
import datetime
import math
import os
import re
import warnings
from collections.abc import Mapping
from typing import Any

import keras
import tensorflow as tf

from tfckpt import retention as _retention
from tfckpt.errors import CheckpointReadError
from tfckpt.observers import CheckpointObserver
from tfckpt.store.layout import CheckpointRecord

# The oldest Keras whose `fit` tfckpt resumes exactly (pyproject.toml's floor,
# tested in CI): before 3.11, `on_train_batch_end` is given the first batch of
# an execution of `steps_per_execution` batches; before 3.7, a tf.data
# dataset is read through one iterator made before the first epoch.
KERAS_FLOOR = (3, 11)
_told_old_keras = False


def keras_version() -> tuple[int, int]:
    """The installed Keras's (major, minor)."""
    major, minor = (keras.__version__.split(".") + ["0"])[:2]
    return int(major), int("".join(c for c in minor if c.isdigit()) or 0)


def check_backend() -> None:
    global _told_old_keras
    if keras.backend.backend() != "tensorflow":
        raise RuntimeError(
            "tfckpt needs Keras's TensorFlow backend, but Keras is using "
            f"{keras.backend.backend()!r}. Set the environment variable "
            "KERAS_BACKEND=tensorflow before importing keras."
        )
    if keras_version() < KERAS_FLOOR and not _told_old_keras:
        _told_old_keras = True
        warnings.warn(
            f"tfckpt: Keras {keras.__version__} is older than "
            f"{'.'.join(map(str, KERAS_FLOOR))}, the oldest Keras tfckpt is tested with: "
            "step-level saves with steps_per_execution > 1 are refused, and a "
            "tf.data resume is not exact before Keras 3.7. "
            "Upgrade with: pip install -U 'keras>=3.11'",
            stacklevel=3,
        )


def check_steps_per_execution(model: Any, save_freq: Any) -> None:
    """Refuses step-level saves that the installed Keras would misplace."""
    spe = int(getattr(model, "steps_per_execution", 1) or 1)
    if spe > 1 and save_freq != "epoch" and keras_version() < KERAS_FLOOR:
        raise ValueError(
            f"save_freq={save_freq!r} with steps_per_execution={spe} needs Keras 3.11 or "
            f"newer (found {keras.__version__}): older Keras tells callbacks the first "
            "batch of each execution, so a checkpoint would record a batch it has not "
            "trained to, and a resumed run would train batches twice. Upgrade Keras "
            "(pip install -U 'keras>=3.11') or pass save_freq='epoch'."
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


@dataclasses.dataclass(frozen=True)
class KeepRules:
    """The retention shortcuts of the callback, the manager and `Run.prune`,
    checked once; their union (with `retention`) is the policy.

    `keep_last=None` keeps every checkpoint for the callback and the manager
    (`none_keeps_all=True`); for `Run.prune`, `None` means "no such rule".
    """

    keep_last: int | None = 3
    keep_best: int | None = None
    keep_every_n_epochs: int | None = None
    keep_every_n_hours: float | None = None
    retention: _retention.RetentionPolicy | None = None
    none_keeps_all: bool = True

    def __post_init__(self) -> None:
        if self.retention is not None and not isinstance(
            self.retention, _retention.RetentionPolicy
        ):
            raise TypeError(
                "`retention` must be a tfckpt.retention.RetentionPolicy (an object with "
                f"a `keep(checkpoints)` method). Received: retention={self.retention!r}"
            )
        none = ", or None to keep all" if self.none_keeps_all else " or None"
        for name, minimum, allowed in (
            ("keep_last", 0, none),
            ("keep_best", 0, " or None"),
            ("keep_every_n_epochs", 1, " or None"),
        ):
            value = getattr(self, name)
            if value is not None and not _is_count(value, minimum):
                raise ValueError(
                    f"`{name}` must be an integer >= {minimum}{allowed}. Received: {name}={value!r}"
                )
        hours = self.keep_every_n_hours
        if hours is not None and (
            isinstance(hours, bool)
            or not isinstance(hours, (int, float))
            or not hours > 0
            or not math.isfinite(hours)
        ):
            raise ValueError(
                "`keep_every_n_hours` must be a positive number or None. "
                f"Received: keep_every_n_hours={hours!r}"
            )

    def given(self) -> bool:
        """Whether any rule is set (for `Run.prune`, which needs one)."""
        rules = (self.keep_last, self.keep_best, self.keep_every_n_epochs)
        return any(r is not None for r in (*rules, self.keep_every_n_hours, self.retention))

    def check_monitor(self, monitor: str | None, missing: str) -> None:
        """`keep_best` needs a metric; `missing` says why there is none."""
        if self.keep_best and monitor is None:
            raise ValueError(
                f"`keep_best={self.keep_best}` needs a metric to rank checkpoints by, {missing}"
            )

    def policy(self, monitor: str | None, mode: str) -> _retention.RetentionPolicy:
        """The union of the rules."""
        keep_last = self.keep_last if self.none_keeps_all else self.keep_last or 0
        return _retention.from_options(
            keep_last=keep_last,
            keep_best=self.keep_best or 0,
            monitor=monitor,
            mode=mode,
            keep_every_n_epochs=self.keep_every_n_epochs,
            keep_every_n_hours=self.keep_every_n_hours,
            extra=self.retention,
        )


def check_directory(directory: object) -> str:
    """`directory` as a str, if it is a usable run directory path."""
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
    return directory


def check_monitor(monitor: object) -> None:
    if monitor is not None and (not isinstance(monitor, str) or not monitor):
        raise ValueError(
            "`monitor` must be a metric name (e.g. 'val_loss') or None. "
            f"Received: monitor={monitor!r}"
        )


def run_options(directory: object, monitor: object, keep: KeepRules) -> str:
    """Checks what the manager and the callback share; returns the directory."""
    directory = check_directory(directory)
    check_monitor(monitor)
    keep.check_monitor(
        monitor,  # type: ignore[arg-type]
        "but monitor=None. Pass monitor='val_loss' (or another metric), or keep_best=0.",
    )
    return directory


def check_save_freq(save_freq: object) -> str | int:
    if save_freq != "epoch" and not _is_count(save_freq, 1):
        raise ValueError(
            "`save_freq` must be 'epoch' or a positive integer (a number of "
            f"training batches). Received: save_freq={save_freq!r}"
        )
    return save_freq  # type: ignore[return-value]


def check_restore(restore: object) -> str | int | bool:
    if not (restore in ("latest", "best") or restore is False or _is_count(restore, 0)):
        raise ValueError(
            "`restore` must be 'latest', 'best', a step (int >= 0) or False. "
            f"Received: restore={restore!r}"
        )
    return restore  # type: ignore[return-value]


def check_choice(name: str, value: object, allowed: tuple[Any, ...]) -> Any:
    """`value` if it is one of `allowed`, else a ValueError naming them."""
    if value not in allowed:
        shown = " or ".join(repr(a) for a in allowed)
        raise ValueError(f"`{name}` must be {shown}. Received: {name}={value!r}")
    return value


def check_flag(name: str, value: object) -> bool:
    if not isinstance(value, bool):
        raise TypeError(f"`{name}` must be True or False. Received: {value!r}")
    return value


RESERVED_OBJECT_NAMES = ("model", "optimizer", "save_counter")


def validate_objects(objects: Any) -> dict[str, Any]:
    """`objects=`: what a checkpoint holds beside the model and its optimizer,
    name -> trackable (a variable, a model, a `tf.Module`, a `tf.data`
    iterator); a ValueError naming what is wrong otherwise."""
    if objects is None:
        return {}
    if not isinstance(objects, Mapping):
        raise ValueError(
            "`objects` must be a dict of name -> trackable (a tf.Variable, a Keras "
            "model or layer, a tf.Module, a tf.data iterator). "
            f"Received: objects={objects!r}"
        )
    out: dict[str, Any] = {}
    for name, value in objects.items():
        if not isinstance(name, str) or not name.isidentifier() or name in RESERVED_OBJECT_NAMES:
            raise ValueError(
                "`objects` keys must be Python identifiers other than "
                f"{', '.join(map(repr, RESERVED_OBJECT_NAMES))}. Received: key {name!r}"
            )
        if not isinstance(value, tf.__internal__.tracking.Trackable):
            raise ValueError(
                f"`objects[{name!r}]` must be something tf.train.Checkpoint saves (a "
                "tf.Variable, a Keras model or layer, a tf.Module, a tf.data iterator). "
                f"Received: {type(value).__name__}"
            )
        out[name] = value
    return out


LOCAL_RULE = "local"  # a mirror_keep_* default: the same as the local rule


@dataclasses.dataclass(frozen=True)
class MirrorOptions:
    """The remote tier of a run (`mirror=` and its settings), checked once.

    Attributes:
        url: the remote run directory, an fsspec URL (`"s3://bucket/exp1"`).
        every: upload every Nth checkpoint (int), or at most one per
            interval (`datetime.timedelta`); the last checkpoint of a run
            (the end of `fit`, a preemption save, `close()`) is always uploaded.
        keep_last: the remote tier's `keep_last` (`None` keeps all).
        keep_best: the remote tier's `keep_best`.
        storage_options: passed to fsspec's filesystem as they are.
    """

    url: str
    every: int | datetime.timedelta = 1
    keep_last: int | None = 3
    keep_best: int | None = None
    storage_options: Mapping[str, Any] | None = None

    def __post_init__(self) -> None:
        every = self.every
        if isinstance(every, datetime.timedelta):
            if every.total_seconds() <= 0:
                raise ValueError(
                    f"`mirror_every` must be a positive timedelta. Received: mirror_every={every!r}"
                )
        elif not _is_count(every, 1):
            raise ValueError(
                "`mirror_every` must be a positive integer (every Nth checkpoint) or a "
                f"datetime.timedelta (at most one upload per interval). Received: "
                f"mirror_every={every!r}"
            )
        if self.storage_options is not None and not isinstance(self.storage_options, Mapping):
            raise TypeError(
                "`storage_options` must be a dict (passed to fsspec). Received: "
                f"{type(self.storage_options).__name__}"
            )


def mirror_options(
    mirror: object,
    every: object,
    keep_last: object,
    keep_best: object,
    storage_options: object,
    local: KeepRules,
) -> MirrorOptions | None:
    """`mirror=` and its settings as `MirrorOptions` (`None`: no mirror)."""
    if mirror is None:
        given = {
            "mirror_every": every != 1,
            "mirror_keep_last": keep_last != LOCAL_RULE,
            "mirror_keep_best": keep_best != LOCAL_RULE,
            "storage_options": storage_options is not None,
        }
        named = [name for name, set_ in given.items() if set_]
        if named:
            raise ValueError(
                f"`{named[0]}` sets up the remote tier: pass mirror='s3://bucket/dir' (or "
                f"another fsspec URL) with it. Received: mirror=None"
            )
        return None
    from tfckpt.remote.bucket import is_remote

    if not isinstance(mirror, (str, os.PathLike)) or not is_remote(mirror):
        raise ValueError(
            "`mirror` must be a remote directory URL that fsspec reaches (s3://, gs://, "
            f"az://, ...), or None. Received: mirror={mirror!r}"
        )
    try:
        rules = KeepRules(
            local.keep_last if keep_last == LOCAL_RULE else keep_last,  # type: ignore[arg-type]
            local.keep_best if keep_best == LOCAL_RULE else keep_best,  # type: ignore[arg-type]
        )
    except ValueError as e:  # named as the caller passed them
        text = re.sub(r"\bkeep_(last|best)\b", r"mirror_keep_\1", str(e))
        raise ValueError(text + " (or 'local': as locally)") from None
    return MirrorOptions(
        os.fspath(mirror),
        every,  # type: ignore[arg-type]
        rules.keep_last,
        rules.keep_best,
        storage_options,  # type: ignore[arg-type]
    )
