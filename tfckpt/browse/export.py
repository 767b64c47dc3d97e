"""Exports of a checkpoint as files plain Keras and TF Serving load
(`Run.export`)."""

from __future__ import annotations

import os
import shutil
import uuid
from collections.abc import Callable
from typing import Any

from tfckpt.store import fs
from tfckpt.store.layout import CheckpointRecord


def export_checkpoint(
    run: Any,
    model: Any,
    path: str | os.PathLike,
    which: Any = None,
    *,
    epoch: int | None = None,
    format: str | None = None,
    overwrite: bool = False,
) -> CheckpointRecord:
    """`Run.export` (see there): restores `which` of `run` into `model`, then
    writes it with Keras under a temporary name renamed into place."""
    path = os.fspath(path)
    kind = export_kind(path, format)
    if not isinstance(overwrite, bool):
        raise TypeError(f"`overwrite` must be True or False. Received: overwrite={overwrite!r}")
    if os.path.lexists(path) and not overwrite:
        raise FileExistsError(
            f"{path!r} already exists. Pass overwrite=True to replace it (or choose another path)."
        )
    if which is None and epoch is None:
        which = "best"
    record = run.restore(model, which, epoch=epoch)
    if kind == "weights":
        write_atomically(path, model.save_weights)
    elif kind == "keras":
        write_atomically(path, model.save)
    else:
        write_atomically(
            path, lambda tmp: model.export(tmp, format="tf_saved_model", verbose=False)
        )
    return record


def export_kind(path: str, format: str | None) -> str:
    if format not in (None, "tf_saved_model"):
        raise ValueError(
            "`format` must be None (chosen by the path's suffix) or 'tf_saved_model'. "
            f"Received: format={format!r}"
        )
    if "://" in path:
        raise ValueError(
            f"`path` must be a local path (exports are renamed into place). Received: path={path!r}"
        )
    name = os.path.basename(os.path.normpath(path))
    if format == "tf_saved_model":
        return "tf_saved_model"
    if name.endswith(".weights.h5"):
        return "weights"
    if name.endswith(".keras"):
        return "keras"
    if not os.path.splitext(name)[1]:
        return "tf_saved_model"
    raise ValueError(
        "`path` must end with '.keras' (the whole model) or '.weights.h5' (the weights), "
        "or have no suffix for a TF SavedModel directory (or pass format='tf_saved_model'). "
        f"Received: path={path!r}"
    )


def write_atomically(path: str, write: Callable[[str], object]) -> None:
    """`write(tmp)` under a temporary name beside `path`, then renamed onto it."""
    parent, name = os.path.split(os.path.abspath(path))
    os.makedirs(parent, exist_ok=True)
    tmp = os.path.join(parent, f".tmp-{uuid.uuid4().hex[:8]}-{name}")
    try:
        write(tmp)
        for root, _, files in os.walk(tmp):
            for f in files:
                fs.fsync_file(os.path.join(root, f))
            fs.fsync_dir(root)
        if os.path.isfile(tmp) and not os.path.isdir(path):
            os.replace(tmp, path)  # atomic, also over an existing file
        else:
            # A directory cannot be renamed over another one: move the old one
            # aside first (a crash in between leaves it there, never a mix).
            old = os.path.join(parent, f".trash-{uuid.uuid4().hex[:8]}-{name}")
            if os.path.lexists(path):
                os.replace(path, old)
            os.replace(tmp, path)
            remove_path(old)
        fs.fsync_dir(parent)
    finally:
        remove_path(tmp)


def remove_path(path: str) -> None:
    if os.path.isdir(path) and not os.path.islink(path):
        shutil.rmtree(path, ignore_errors=True)
    elif os.path.lexists(path):
        os.remove(path)
