"""A monitored metric's direction and comparisons, in one place (as Keras's
`MonitorCallback` owns them for its callbacks).

Plain Python: Keras is imported only to look up the direction of one of its
metrics by name.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from typing import Any

MODES = ("min", "max")  # a direction
AUTO_MODES = ("auto", *MODES)  # what users may pass


def check_mode(mode: object, allowed: tuple[str, ...] = MODES) -> str:
    """`mode` if it is one of `allowed`, else a ValueError naming them."""
    if mode not in allowed:
        raise ValueError(f"`mode` must be one of {allowed}. Received: mode={mode!r}")
    return mode  # type: ignore[return-value]


def is_better(value: float, reference: float | None, mode: str) -> bool:
    """Whether `value` improves on `reference` (`None`: nothing yet) in `mode`."""
    if reference is None:
        return True
    return value < reference if mode == "min" else value > reference


def keras_direction(name: str) -> str | None:
    """The direction ("max" or "min") of Keras's metric of that name, by its
    `_direction`; `None` when Keras does not know it."""
    import keras

    try:
        direction = getattr(keras.metrics.get(name), "_direction", None)
    except (ValueError, TypeError):
        return None
    return {"up": "max", "down": "min"}.get(direction)


def direction(metric: str, compiled: Iterable[Any] = ()) -> str | None:
    """`mode="auto"` for `metric`: `min` for losses, else the direction of a
    compiled metric of that name (`compiled`: a model's `metrics`), else that
    of Keras's metric of that name; `None` when none of them tells."""
    name = metric.removeprefix("val_")
    if name == "loss" or name.endswith("_loss"):
        return "min"
    stack = list(compiled)
    while stack:
        candidate = stack.pop()
        stack.extend(getattr(candidate, "metrics", []) or [])
        if getattr(candidate, "name", None) == name and hasattr(candidate, "_direction"):
            return "max" if candidate._direction == "up" else "min"
    return keras_direction(name)


def metric_value(checkpoint: Any, monitor: str) -> float | None:
    """The checkpoint's finite value of `monitor`, or `None`."""
    value = checkpoint.metrics.get(monitor)
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value) if math.isfinite(value) else None


def rank(records: Sequence[Any], metric: str, mode: str) -> list[Any]:
    """`records` with a value of `metric`, best first (ties: the oldest first,
    as `retention.KeepBest` ranks them)."""
    scored = [(v, r.seq, r) for r in records if (v := metric_value(r, metric)) is not None]
    scored.sort(key=lambda t: (t[0] if mode == "min" else -t[0], t[1]))
    return [r for _, _, r in scored]


def compiled_metric_names(model: Any) -> list[str]:
    """Names of the metrics passed to `compile` (known before Keras builds them)."""
    compiled = getattr(model, "_compile_metrics", None)
    todo, names = [getattr(compiled, "_user_metrics", None)], []
    while todo:
        item = todo.pop()
        if isinstance(item, dict):
            todo.extend(item.values())
        elif isinstance(item, (list, tuple)):
            todo.extend(item)
        elif isinstance(item, str):
            names.append(item)
        elif item is not None:
            names.append(getattr(item, "name", None) or getattr(item, "__name__", str(item)))
    return sorted(set(names))


def resolve_mode(monitor: str | None, mode: str, model: Any) -> str:
    """The direction of `monitor` for `model` at the start of `fit`: `mode`
    unless it is `"auto"`; then as `direction` tells, or a ValueError that
    says what the model logs."""
    if mode != "auto" or monitor is None:
        return "min" if mode == "auto" else mode
    # The compiled metric's own direction is known once fit has traced it.
    found = direction(monitor, getattr(model, "metrics", []))
    if found is not None:
        return found
    # A model compiled with a loss alone logs `loss` (and `val_loss`): a name
    # that is none of these is most likely misspelt, not of unknown direction.
    known = ["loss", *(n for n in compiled_metric_names(model) if n != "loss")]
    if monitor.removeprefix("val_") not in known:
        logged = ", ".join([*known, *(f"val_{n}" for n in known)])
        raise ValueError(
            f"CheckpointCallback: monitor={monitor!r} is not a metric this model "
            f"logs. It logs: {logged} (the val_ ones with validation data). "
            "Pass one of them, or mode='min' or mode='max' for a metric that "
            "another callback adds to the logs."
        )
    raise ValueError(
        f"CheckpointCallback cannot tell whether monitor={monitor!r} should "
        "be minimized or maximized. Pass mode='min' or mode='max'."
    )


def in_logs(monitor: str | None, logs: dict[str, Any]) -> bool | None:
    """Whether an epoch's `logs` hold `monitor`: `None` when it is missing
    only because no validation ran; a ValueError when it is not logged at all."""
    if monitor is None:
        return False
    if monitor in logs:
        return True
    if not monitor.startswith("val_") or any(k.startswith("val_") for k in logs):
        raise ValueError(
            f"CheckpointCallback: monitor={monitor!r} is not among the metrics "
            f"of this epoch: {sorted(logs)}. Pass one of them (or monitor=None)."
        )
    return None
