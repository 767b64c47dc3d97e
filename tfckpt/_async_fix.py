"""A fix for TF's native async checkpointing of Keras 3 variables.

`tf.train.CheckpointOptions(experimental_enable_async_checkpoint=True)` copies
every variable to a CPU twin with `_copy_trackable_to_cpu(object_map)` on each
write. Keras 3's TF `Variable` (keras/src/backend/tensorflow/core.py) creates a
new `tf.Variable` there on every call, so the second async write of a Keras
model fails ("tf.function only supports singleton tf.Variables created on the
first call"). Creating the twin once and assigning to it afterwards is what
TF's own `ResourceVariable._copy_trackable_to_cpu` does; `enable()` installs
that behaviour, once, and only over the implementation it was written for.
"""

from __future__ import annotations

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
