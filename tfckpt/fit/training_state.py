"""What exact resumption through `fit` needs beyond the TF checkpoint and the
random state (`saving.random_state`): other callbacks' state, and the metric
accumulators of an epoch interrupted in the middle."""

from __future__ import annotations

from typing import Any

import keras
import numpy as np

from tfckpt.saving.random_state import plain
from tfckpt.stateful import StatefulCallback

# Keras's own stateful callbacks, by the attributes that make their decisions.
_BUILTIN_STATE = {
    keras.callbacks.EarlyStopping: ("wait", "stopped_epoch", "best", "best_weights", "best_epoch"),
    keras.callbacks.ReduceLROnPlateau: ("wait", "cooldown_counter", "best"),
}


def _builtin_fields(callback: Any) -> tuple[str, ...] | None:
    for cls, fields in _BUILTIN_STATE.items():
        if type(callback) is cls:
            return fields
    return None


def _keyed(callbacks: list[Any]) -> dict[str, Any]:
    """Stable keys for the callbacks that have state: class name and rank."""
    keyed, seen = {}, {}
    for cb in callbacks:
        if isinstance(cb, StatefulCallback) or _builtin_fields(cb) is not None:
            name = type(cb).__name__
            seen[name] = seen.get(name, -1) + 1
            keyed[f"{name}#{seen[name]}"] = cb
    return keyed


def callback_states(callbacks: list[Any]) -> dict[str, dict[str, Any]]:
    states = {}
    for key, cb in _keyed(callbacks).items():
        if isinstance(cb, StatefulCallback):
            states[key] = dict(cb.get_checkpoint_state())
        else:
            states[key] = {f: plain(getattr(cb, f, None)) for f in _builtin_fields(cb)}
    return states


def set_callback_states(callbacks: list[Any], states: dict[str, dict[str, Any]]) -> list[str]:
    """Restores what `callback_states` saved; returns the keys restored."""
    restored = []
    for key, cb in _keyed(callbacks).items():
        if key not in states:
            continue
        if isinstance(cb, StatefulCallback):
            cb.set_checkpoint_state(states[key])
        else:
            for field, value in states[key].items():
                if field == "best_weights" and value is not None:
                    value = [np.asarray(w) for w in value]
                setattr(cb, field, value)
        restored.append(key)
    return restored


def metric_values(model: Any) -> list[Any]:
    return [np.asarray(v.numpy()) for v in model.metrics_variables]


def set_metric_values(model: Any, values: list[Any], data_batch: Any) -> bool:
    """Sets the epoch's metric accumulators (building compile metrics from a
    real batch first: without a strategy Keras builds them at the first step)."""
    if len(model.metrics_variables) != len(values):
        try:
            model._symbolic_build(data_batch=data_batch)
        except Exception:
            return False
    variables = model.metrics_variables
    if len(variables) != len(values):
        return False
    for variable, value in zip(variables, values):
        variable.assign(np.asarray(value))
    return True


def same_state(a: Any, b: Any) -> bool:
    """Whether two states (nested dicts, lists, NumPy arrays, numbers) are equal;
    NaN equals NaN (EarlyStopping's `best` may be one)."""
    if isinstance(a, dict) or isinstance(b, dict):
        return (
            isinstance(a, dict)
            and isinstance(b, dict)
            and a.keys() == b.keys()
            and all(same_state(a[k], b[k]) for k in a)
        )
    if isinstance(a, (list, tuple)) or isinstance(b, (list, tuple)):
        return (
            isinstance(a, (list, tuple))
            and isinstance(b, (list, tuple))
            and len(a) == len(b)
            and all(same_state(x, y) for x, y in zip(a, b))
        )
    if isinstance(a, np.ndarray) or isinstance(b, np.ndarray):
        a, b = np.asarray(a), np.asarray(b)
        if a.shape != b.shape or a.dtype != b.dtype:
            return False
        if a.dtype.kind in "fc":
            return bool(np.array_equal(a, b, equal_nan=True))
        return bool(np.array_equal(a, b))
    if isinstance(a, float) and isinstance(b, float) and a != a and b != b:
        return True
    return bool(a == b)


def optimizer_scalars(optimizer: Any) -> list[Any]:
    """The optimizer's scalar variables (learning rate, iterations, a loss
    scale): what a callback such as ReduceLROnPlateau changes at an epoch end.
    Rank 0 only: the slots of one-element weights (a bias of shape (1,)) are
    not scalars, and reading thousands of them would slow every save."""
    return [
        np.asarray(v.numpy())
        for v in (getattr(optimizer, "variables", None) or [])
        if len(v.shape) == 0
    ]
