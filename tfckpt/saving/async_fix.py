"""A fix for TF's native async checkpointing of Keras 3 variables.

`tf.train.CheckpointOptions(experimental_enable_async_checkpoint=True)` copies
every variable to a CPU twin with `_copy_trackable_to_cpu(object_map)` on each
write. Keras 3's TF `Variable` (keras/src/backend/tensorflow/core.py) creates a
new `tf.Variable` there on every call, so the second async write of a Keras
model fails ("tf.function only supports singleton tf.Variables created on the
first call"). Creating the twin once and assigning to it afterwards is what
TF's own `ResourceVariable._copy_trackable_to_cpu` does; `enable()` installs
that behaviour, once, and only over the implementation it was written for.
It keeps one twin per Keras variable (Keras's version makes two: one for the
tf.Variable it wraps, and a new tf.Variable from that).

TF's async helper (`tensorflow/python/checkpoint/async_checkpoint_helper.py`,
one per `tf.train.Checkpoint`, in `_async_checkpointer_impl`) also keeps the
error of a failed background write in `_async_error` and raises it at the
next `write()`, and it fixes the variables it copies at its first write.
`take_write_error` and `retire` let the manager report that error with the
checkpoint it belongs to, and start over with a fresh `tf.train.Checkpoint`.

From its second write on, the helper copies the variables with a
`tf.function` (`_copy_to_cpu`) whose first call traces a read and an assign
per variable: 14.4 s at 6,002 variables on a 2-core VM, blocking `fit` once,
then 0.06 s per copy. `copy_eagerly` replaces it with the same reads and
assigns as eager ops: 0.11 s per copy at 6,002 variables, never a trace.

At its first write the helper makes every host twin while the caller waits
(most of that write's 1.0-1.2 s at 6,002 variables); `prepare_twins` makes
them beforehand, in the manager's save thread, and that write fills them.
"""

from __future__ import annotations

import atexit
import threading
import weakref
from typing import Any

import tensorflow as tf
from tensorflow.python.ops import gen_resource_variable_ops, resource_variable_ops

_lock = threading.Lock()
_enabled = False


def _copy_trackable_to_cpu(self, object_map):
    if self in object_map:
        _assign(object_map[self], self.value)
        return
    # One host twin per Keras variable. The saver writes a Keras variable
    # through its twin; the tf.Variable it wraps is not a node of the object
    # graph, so it needs no twin of its own (Keras's version made one as well:
    # a second copy of every tensor at every save).
    twin = _take_prepared(self)
    if twin is None:
        twin = _host_twin(self.value)
    _assign(twin, self.value)
    object_map[self] = twin


def _host_twin(value: Any) -> Any:
    """An empty host variable shaped like `value`, made as TF makes its own
    twins: a plain resource variable on the host, whatever distribution
    strategy or variable creator is in scope."""
    device = tf.DeviceSpec.from_string(value.device).replace(device_type="CPU", device_index=0)
    with tf.device(device.to_string()):
        return resource_variable_ops.UninitializedVariable(
            trainable=False, shape=value.shape, dtype=value.dtype
        )


# Twins made ahead of a first async write, by id of their Keras variable:
# (a weak reference to that variable, the twin). Keras variables compare
# by value, so they cannot key a dict themselves.
_prepared: dict[int, tuple[Any, Any]] = {}


def prepare_twins(variables: list[Any]) -> None:
    """Makes the host twins of the Keras variables among `variables` that
    have none yet, for the first async write to fill: it would otherwise
    make them all while `fit` waits (1.0-1.2 s at 6,002 variables, most of
    the first save's time). Runs in a background thread; the twins hold no
    memory until that write fills them."""
    for variable in variables:
        # Its `_value`, not `value`: reading `value` of a variable whose
        # initialization is deferred would run its initializer here.
        value = getattr(variable, "_value", None)
        if not isinstance(value, resource_variable_ops.BaseResourceVariable):
            continue  # a tf.Variable, a distributed one, one not made yet: made at the write
        with _lock:
            entry = _prepared.get(id(variable))
            if entry is not None and entry[0]() is variable:
                continue
        twin = _host_twin(value)
        with _lock:
            _prepared[id(variable)] = (weakref.ref(variable), twin)


def _take_prepared(variable: Any) -> Any | None:
    with _lock:
        entry = _prepared.pop(id(variable), None)
    return entry[1] if entry is not None and entry[0]() is variable else None


def drop_prepared(variables: list[Any]) -> None:
    """Forgets the twins made for `variables` that no write took."""
    with _lock:
        for variable in variables:
            _prepared.pop(id(variable), None)


def _assign(twin: Any, source: Any) -> None:
    """twin <- source's value: two eager ops where both are plain resource
    variables (Variable.assign's Python costs ~10x more, which thousands of
    variables feel), else through `assign`."""
    if isinstance(source, resource_variable_ops.BaseResourceVariable):
        value = gen_resource_variable_ops.read_variable_op(source.handle, source.dtype)
        gen_resource_variable_ops.assign_variable_op(twin.handle, value)
    else:
        twin.assign(source.read_value())


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


class _EagerCopy:
    """Stands in for the helper's traced `_copy_to_cpu`: copies each variable
    to its host twin with an eager read and assign; anything else (a
    distributed or sharded variable, a trackable with its own copy) through
    its own `_copy_trackable_to_cpu`, as TF's version does."""

    def __init__(self, helper: Any):
        self._helper = helper
        self._plan: list[Any] | None = None  # made at the first call: twins exist then

    def _make_plan(self) -> list[Any]:
        object_map = self._helper._object_map
        plan: list[Any] = []
        for trackable in self._helper._saveable_trackables:
            if isinstance(trackable, resource_variable_ops.BaseResourceVariable):
                source = trackable  # (its `value` is a method)
            else:
                source = getattr(trackable, "value", None)  # a Keras variable's tf.Variable
            twin = object_map[trackable] if trackable in object_map else None
            if isinstance(source, resource_variable_ops.BaseResourceVariable) and isinstance(
                twin, resource_variable_ops.BaseResourceVariable
            ):
                plan.append((twin.handle, source.handle, source.dtype))
            else:
                plan.append(lambda t=trackable: _copy_one(t, object_map))
        for embedding in self._helper._tpu_embedding_objects:
            plan.append(embedding._retrieve_variables)
        return plan

    def __call__(self) -> None:
        if self._plan is None:
            self._plan = self._make_plan()
        for step in self._plan:
            if callable(step):
                step()
            else:
                twin, source, dtype = step  # handles, looked up once
                value = gen_resource_variable_ops.read_variable_op(source, dtype)
                gen_resource_variable_ops.assign_variable_op(twin, value)


def _copy_one(trackable: Any, object_map: Any) -> None:
    try:
        trackable._copy_trackable_to_cpu(object_map=object_map)
    except NotImplementedError:
        pass  # TF's copy skips it too (and logs why at the helper's first write)


def copy_eagerly(checkpoint: tf.train.Checkpoint) -> None:
    """Makes `checkpoint`'s async helper copy the variables with eager ops
    from its next write on (call it after a write with async options)."""
    helper = _helper(checkpoint)
    if helper is None or not getattr(helper, "_initialized", False):
        return
    if isinstance(vars(helper).get("_copy_to_cpu"), _EagerCopy):
        return
    needed = ("_object_map", "_saveable_trackables", "_tpu_embedding_objects")
    if not all(hasattr(helper, a) for a in needed):
        return  # not the helper this was written for: leave TF's copy
    helper._copy_to_cpu = _EagerCopy(helper)


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
