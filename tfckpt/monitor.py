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
