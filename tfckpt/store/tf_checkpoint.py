"""What goes into a checkpoint, and restoring it with the checks TF leaves to us.

Serialization is `tf.train.Checkpoint(model=..., optimizer=...)`, so every
checkpoint stays readable by plain TensorFlow.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from typing import Any

import keras
import numpy as np
import tensorflow as tf

from tfckpt.errors import IncompatibleCheckpointError

# How TF says that a checkpoint's bytes are not the ones written: a tensor's
# CRC32C ("Checksum does not match"), the CRC of a record's length ("The length
# checksum does not match", a flipped byte among a shard's first bytes), or a
# malformed bundle. An I/O error says none of these.
_DAMAGE = re.compile(r"checksum does not match|TensorBundle", re.IGNORECASE)


def is_damage(e: BaseException) -> bool:
    """Whether an error reading a checkpoint through TF means damaged bytes
    (skip the checkpoint) rather than a failed read (try again)."""
    text = getattr(e, "message", None) or str(e)
    return isinstance(e, tf.errors.DataLossError) or bool(_DAMAGE.search(text))


def _is_built(model: Any) -> bool:
    return bool(getattr(model, "built", True) or getattr(model, "weights", None))


def build_config(model: Any) -> dict | None:
    """What `ensure_built` needs to build an unbuilt twin of `model`."""
    try:
        return model.get_build_config() if _is_built(model) else None
    except (AttributeError, NotImplementedError, TypeError, ValueError):
        return None


def ensure_built(model: Any, config: dict | None) -> None:
    """Builds `model` from the saved build config when it is not built yet.

    Without a strategy, Keras builds a model only when the train function is
    first traced, i.e. after `on_train_begin`; restoring into an unbuilt model
    would silently skip every variable, so build it here or fail clearly.
    """
    if _is_built(model):
        return
    if config:
        try:
            model.build_from_config(config)
        except Exception as e:
            raise ValueError(
                f"Model {getattr(model, 'name', model)!r} is not built and could not "
                f"be built from the checkpoint's build config {config}: {e}. Build it "
                "first: call it on a batch of data, or `model.build(input_shape)`."
            ) from e
        if _is_built(model):
            return
    raise ValueError(
        f"Model {getattr(model, 'name', model)!r} is not built, so its "
        "variables do not exist yet and restoring would silently skip them. "
        "Build it first: call it on a batch of data, or `model.build(input_shape)`."
    )


def build_optimizer(optimizer: Any, model: Any) -> None:
    """Creates the optimizer's slots now, so restored slot values are checked."""
    if optimizer is not None and not getattr(optimizer, "built", True):
        optimizer.build(model.trainable_variables)


# TF's async writer always adds the Checkpoint's `save_counter`; sync writes
# create it too, so both modes write the same objects.
SAVE_COUNTER = "save_counter"


def checkpoint_for(objects: Mapping[str, Any]) -> tf.train.Checkpoint:
    checkpoint = tf.train.Checkpoint(**{k: v for k, v in objects.items() if v is not None})
    checkpoint.save_counter  # noqa: B018 - the property creates the variable
    return checkpoint


def read(
    prefix: str,
    objects: Mapping[str, Any],
    *,
    saved: list[str] | None = None,
    strict: bool = True,
) -> None:
    """Restores `objects` (name -> trackable) from `prefix`.

    `saved` names the objects the checkpoint holds; objects it does not hold are
    left alone. `strict` requires every value of the restored objects to match
    (a different architecture fails, naming what did not match); otherwise only
    the objects passed in must be fully restored (e.g. a model restored for
    inference from a checkpoint that also holds an optimizer).
    """
    wanted = {k: v for k, v in objects.items() if v is not None and (saved is None or k in saved)}
    # TF reports an I/O error on some reads (the object graph) as objects that
    # were not restored: a mismatch is only believed when a second read agrees.
    for attempt in (1, 2):
        checkpoint = tf.train.Checkpoint(**wanted)
        matched = dict(wanted)
        if saved is not None and SAVE_COUNTER in saved:
            matched[SAVE_COUNTER] = checkpoint.save_counter  # created, to be matched too
        try:
            status = checkpoint.read(prefix)
        except (ValueError, tf.errors.InvalidArgumentError) as e:
            raise IncompatibleCheckpointError(
                f"Checkpoint {prefix!r} does not match the model: {e}"
            ) from e
        try:
            if strict and (saved is None or set(matched) == set(saved)):
                status.assert_consumed()
            else:
                status.expect_partial()
                status.assert_existing_objects_matched()
            return
        except AssertionError as e:
            if attempt == 2:
                raise IncompatibleCheckpointError(
                    f"Checkpoint {prefix!r} does not match the model being restored "
                    f"(different architecture?): {e}"
                ) from None


def optimizer_step(optimizer: Any) -> int:
    """The optimizer's iteration count (also for a mirrored variable, which
    `int()` does not take)."""
    return int(np.asarray(keras.ops.convert_to_numpy(optimizer.iterations)))


def variables(model: Any, optimizer: Any) -> list[Any]:
    """The variables a save of `model` and `optimizer` writes."""
    found = list(model.weights)
    if optimizer is not None:
        found += list(optimizer.variables)
    return found


def state_bytes(variables: Sequence[Any]) -> int:
    """Bytes of `variables` (for the free-space check before a save)."""
    sizes: dict[Any, int] = {}  # itemsize by dtype: one lookup per dtype, not per variable
    total = 0
    for v in variables:
        dtype = v.dtype
        if dtype not in sizes:
            sizes[dtype] = np.dtype(getattr(dtype, "name", dtype)).itemsize
        total += math.prod(v.shape) * sizes[dtype]
    return total


def read_model(model: Any, path: str, manifest: Mapping[str, Any]) -> None:
    """Reads a checkpoint's model weights into `model` (built first from the
    manifest's build config), ignoring what `model` has no place for."""
    ensure_built(model, manifest.get("build_config"))
    read(path, {"model": model}, saved=manifest.get("contents"), strict=False)
