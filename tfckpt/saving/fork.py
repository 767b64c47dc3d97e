"""A new run forked from a checkpoint of another run (`init_from`)."""

from __future__ import annotations

import os
from typing import Any

from tfckpt.errors import CheckpointError
from tfckpt.options import parse_source
from tfckpt.run import Run
from tfckpt.store import fs, tf_checkpoint
from tfckpt.store.layout import CheckpointRecord


def fork(
    source: Any,
    model: Any,
    optimizer: Any,
    *,
    with_optimizer: bool | str = True,
    verify: bool = True,
) -> tuple[CheckpointRecord, dict[str, Any], dict[str, Any], str | None]:
    """Restores the checkpoint `source` names (`"DIR@best"`, a record, ...)
    into `model`, and into `optimizer` if `with_optimizer` (`"auto"`: if it
    was saved in the same training phase, see `tf_checkpoint.phase`).

    Returns:
        The parent's record, the state saved with it, the parent as every
        checkpoint of the new run records it (`manifest["parent"]`), and how
        the training phase changed (`"auto"` left the optimizer), or `None`.
    """
    directory, which, epoch = parse_source(source)
    parent = Run(directory)
    change = None
    if with_optimizer == "auto":
        chosen = parent.select(which, epoch=epoch)
        if chosen:
            change = tf_checkpoint.phase_change(
                chosen[0].manifest.get("phase"), tf_checkpoint.phase(model, optimizer)
            )
        with_optimizer = change is None
    objects = {"model": model}
    if with_optimizer:
        objects["optimizer"] = optimizer
    record = parent.restore_into(objects, which, epoch=epoch, strict=with_optimizer, verify=verify)
    if record is None:
        raise CheckpointError(f"init_from={source!r}: {directory!r} holds no checkpoint.")
    info = {
        "directory": os.path.abspath(directory) if fs.is_local(directory) else directory,
        "name": record.name,
        "step": record.step,
        "epoch": record.epoch,
        "batch": record.batch,
        "optimizer": with_optimizer,
    }
    return record, parent.state(record), info, change
