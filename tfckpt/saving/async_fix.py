"""A fix for TF's native async checkpointing of Keras 3 variables.

`tf.train.CheckpointOptions(experimental_enable_async_checkpoint=True)` copies
every variable to a CPU twin with `_copy_trackable_to_cpu(object_map)` on each
write. Keras 3's TF `Variable` (keras/src/backend/tensorflow/core.py) creates a
new `tf.Variable` there on every call, so the second async write of a Keras
model fails ("tf.function only supports singleton tf.Variables created on the
first call"). Creating the twin once and assigning to it afterwards is what
TF's own `ResourceVariable._copy_trackable_to_cpu` does; `enable()` installs
that behaviour, once, and only over the implementation it was written for.

TF's async helper (`tensorflow/python/checkpoint/async_checkpoint_helper.py`,
one per `tf.train.Checkpoint`, in `_async_checkpointer_impl`) also keeps the
error of a failed background write in `_async_error` and raises it at the
next `write()`, and it fixes the variables it copies at its first write.
`take_write_error` and `retire` let the manager report that error with the
checkpoint it belongs to, and start over with a fresh `tf.train.Checkpoint`.
"""

from __future__ import annotations

import atexit
import threading

import tensorflow as tf

_lock = threading.Lock()
_enabled = False


def _copy_trackable_to_cpu(self, object_map):
    self.value._copy_trackable_to_cpu(object_map)
    if self in object_map:
        object_map[self].assign(object_map[self.value])
    else:
        object_map[self] = tf.Variable(object_map[self.value])


def enable() -> None:
    global _enabled
    with _lock:
        if _enabled:
            return
        from keras.src.backend.tensorflow import core

        current = getattr(core.Variable, "_copy_trackable_to_cpu", None)
        if current is None or "singleton" in (getattr(current, "__doc__", "") or ""):
            return
        core.Variable._copy_trackable_to_cpu = _copy_trackable_to_cpu
        _enabled = True


def _helper(checkpoint: tf.train.Checkpoint) -> object | None:
    return getattr(checkpoint, "_async_checkpointer_impl", None)


def take_write_error(checkpoint: tf.train.Checkpoint) -> BaseException | None:
    """The error of `checkpoint`'s last background write, if it failed, and
    forgets it (TF would raise it again at the next `write()`). Call it after
    `checkpoint.sync()`."""
    helper = _helper(checkpoint)
    error = getattr(helper, "_async_error", None)
    if error is not None:
        helper._async_error = None
    return error


def retire(checkpoint: tf.train.Checkpoint) -> None:
    """Stops the async helper of `checkpoint` (waiting for its write in
    flight) and frees its host copies of the variables. TF keeps the helper
    alive until the process exits (an `atexit` hook joins its thread)."""
    helper = _helper(checkpoint)
    if helper is None:
        return
    checkpoint._async_checkpointer_impl = None
    join = getattr(helper, "_join_async_save_thread", None)
    if join is None:
        return
    atexit.unregister(join)
    helper._async_error = None  # reported by the save it belongs to
    try:
        join()
    except Exception:
        pass
