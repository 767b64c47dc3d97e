"""Which checkpoints a selection means (`"latest"`, `"best"`, a step, a name,
a record, or an epoch), in the order a restore tries them."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from tfckpt.errors import CheckpointNotFoundError
from tfckpt.monitor import AUTO_MODES, check_mode, direction, metric_value, rank
from tfckpt.store.layout import CheckpointRecord


def select(
    records: Sequence[CheckpointRecord], which: Any, epoch: int | None, directory: str
) -> list[CheckpointRecord]:
    """`Run.select` (see there) over `records`, a run's checkpoints oldest
    first, with the run's `(metric, mode)` as `records.monitor`."""
    if epoch is not None:
        if which is not None:
            raise ValueError(
                "Pass either `which` or `epoch`, not both. "
                f"Received: which={which!r}, epoch={epoch!r}"
            )
        if isinstance(epoch, bool) or not isinstance(epoch, int) or epoch < 0:
            raise ValueError(f"`epoch` must be an integer >= 0. Received: epoch={epoch!r}")
        newest_first = [r for r in reversed(records) if r.epoch == epoch]
        # At the epoch boundary; else the mid-epoch ones nearest to it.
        found = [r for r in newest_first if r.batch == 0] or sorted(
            newest_first, key=lambda r: r.batch
        )
        if found:
            return found
        raise CheckpointNotFoundError(
            f"No checkpoint matches epoch={epoch} in {directory!r}. {_available(records)}"
        )
    if which is None:
        which = "latest"
    if isinstance(which, CheckpointRecord):
        return [which]
    if which == "latest":
        return records[::-1]
    if which == "best":
        if records.monitor is None and records:
            raise CheckpointNotFoundError(
                f"which='best': run {directory!r} tracks no metric "
                "(it was saved with monitor=None). Use 'latest' or a step."
            )
        ranked = rank(records, *records.monitor) if records else []
        if records and not ranked:
            raise CheckpointNotFoundError(
                f"which='best': no checkpoint in {directory!r} has a value "
                f"of {records.monitor[0]!r}."
            )
        return ranked
    if isinstance(which, str):
        found = [r for r in records if r.name == which]
        if found:
            return found
    elif isinstance(which, int) and not isinstance(which, bool):
        found = [r for r in reversed(records) if r.step == which]
        if found:
            return found
    else:
        raise TypeError(
            "`which` must be 'latest', 'best', a step (int), a checkpoint name "
            f"or a CheckpointRecord. Received: which={which!r}"
        )
    raise CheckpointNotFoundError(
        f"No checkpoint matches which={which!r} in {directory!r}. {_available(records)}"
    )


def _available(records: Sequence[CheckpointRecord]) -> str:
    listed = ", ".join(f"{r.name} (step {r.step})" for r in records) or "none"
    epochs = ", ".join(str(e) for e in sorted({r.epoch for r in records if r.batch == 0}))
    return f"Available: {listed}; epochs with an epoch-end checkpoint: {epochs or 'none'}."


def best_by(
    records: Sequence[CheckpointRecord], metric: str, mode: str, directory: str
) -> CheckpointRecord:
    """`Run.best_by` (see there) over `records` (with `records.monitor`)."""
    if not isinstance(metric, str) or not metric:
        raise ValueError(
            f"`metric` must be a metric name (e.g. 'val_accuracy'). Received: metric={metric!r}"
        )
    check_mode(mode, AUTO_MODES)
    if not any(metric_value(r, metric) is not None for r in records):
        recorded = sorted({k for r in records for k in r.metrics})
        raise CheckpointNotFoundError(
            f"No checkpoint in {directory!r} has a value of {metric!r}. "
            f"Metrics recorded: {', '.join(recorded) or 'none'}."
        )
    if mode == "auto":
        mode = _direction(metric, records.monitor)
    return rank(records, metric, mode)[0]


def _direction(metric: str, monitor: tuple[str, str] | None) -> str:
    """`mode="auto"` for `metric`: the run's own mode for its monitor, else
    `monitor.direction` (by name: no model here)."""
    if monitor is not None and monitor[0] == metric:
        return monitor[1]
    found = direction(metric)
    if found is not None:
        return found
    raise ValueError(
        f"Cannot tell whether {metric!r} should be minimized or maximized. "
        "Pass mode='min' or mode='max'."
    )
