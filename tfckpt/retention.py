"""Retention policies: which checkpoints to keep.

A policy looks at the committed checkpoints of a run (oldest first) and says,
for each one, why it keeps it, or `None` when it has no reason to. The manager
keeps a checkpoint when any policy keeps it and deletes the rest; the newest
committed checkpoint is always kept, whatever the policies say.

Policies are plain Python: no TensorFlow, no I/O, and decisions depend only on
the checkpoints passed in (what is on disk), never on process memory, so they
survive restarts. Write your own by implementing `RetentionPolicy`:

```python
@dataclasses.dataclass(frozen=True)
class KeepEpochEnds:
    def keep(self, checkpoints):
        return ["epoch end" if c.batch == 0 else None for c in checkpoints]

manager = tfckpt.CheckpointManager(
    "runs/exp", model, retention=KeepEpochEnds()
)
```
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence
from typing import Protocol, runtime_checkable

from tfckpt.monitor import check_mode, is_better, metric_value

__all__ = [
    "AnyOf",
    "CheckpointInfo",
    "KeepAll",
    "KeepBest",
    "KeepEveryNEpochs",
    "KeepEveryNHours",
    "KeepLast",
    "RetentionPolicy",
    "is_better",
]


class CheckpointInfo(Protocol):
    """What a policy may read of a checkpoint (`tfckpt.CheckpointRecord` has it)."""

    @property
    def step(self) -> int: ...

    @property
    def epoch(self) -> int: ...

    @property
    def batch(self) -> int: ...

    @property
    def time(self) -> float: ...

    @property
    def metrics(self) -> Mapping[str, float]: ...


@runtime_checkable
class RetentionPolicy(Protocol):
    """Says, for each checkpoint (oldest first), why it is kept or `None`."""

    def keep(self, checkpoints: Sequence[CheckpointInfo]) -> list[str | None]: ...


def _check_count(name: str, value: object, minimum: int = 1) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"`{name}` must be an integer >= {minimum}. Received: {name}={value!r}")


@dataclasses.dataclass(frozen=True)
class KeepAll:
    """Keeps every checkpoint."""

    def keep(self, checkpoints: Sequence[CheckpointInfo]) -> list[str | None]:
        return ["all" for _ in checkpoints]


@dataclasses.dataclass(frozen=True)
class KeepLast:
    """Keeps the `n` newest checkpoints."""

    n: int

    def __post_init__(self) -> None:
        _check_count("n", self.n)

    def keep(self, checkpoints: Sequence[CheckpointInfo]) -> list[str | None]:
        first_kept = len(checkpoints) - self.n
        return [f"last {self.n}" if i >= first_kept else None for i in range(len(checkpoints))]


@dataclasses.dataclass(frozen=True)
class KeepBest:
    """Keeps the `k` checkpoints with the best value of `monitor`.

    Checkpoints without a finite value of `monitor` are not candidates; ties
    go to the older checkpoint.
    """

    k: int
    monitor: str
    mode: str = "min"

    def __post_init__(self) -> None:
        _check_count("k", self.k)
        if not isinstance(self.monitor, str) or not self.monitor:
            raise ValueError(f"`monitor` must be a metric name. Received: monitor={self.monitor!r}")
        check_mode(self.mode)

    def keep(self, checkpoints: Sequence[CheckpointInfo]) -> list[str | None]:
        scored = [
            (value, i)
            for i, c in enumerate(checkpoints)
            if (value := metric_value(c, self.monitor)) is not None
        ]
        sign = 1.0 if self.mode == "min" else -1.0
        scored.sort(key=lambda vi: (sign * vi[0], vi[1]))
        reasons: list[str | None] = [None] * len(checkpoints)
        for rank, (value, i) in enumerate(scored[: self.k], start=1):
            reasons[i] = f"best {rank}/{self.k} {self.monitor}={value:.6g}"
        return reasons


@dataclasses.dataclass(frozen=True)
class KeepEveryNEpochs:
    """Keeps the first checkpoint at or after every `n`-th completed epoch.

    With epoch-end saves that is the checkpoint of epoch n, 2n, 3n, ...; with
    step-level saves, the first one taken after each such epoch ended.
    """

    n: int

    def __post_init__(self) -> None:
        _check_count("n", self.n)

    def keep(self, checkpoints: Sequence[CheckpointInfo]) -> list[str | None]:
        reasons: list[str | None] = [None] * len(checkpoints)
        seen: set[int] = set()
        for i, c in enumerate(checkpoints):
            bucket = c.epoch // self.n
            if bucket >= 1 and bucket not in seen:
                seen.add(bucket)
                reasons[i] = f"every {self.n} epochs"
        return reasons


@dataclasses.dataclass(frozen=True)
class KeepEveryNHours:
    """Keeps the first checkpoint of every `hours`-long window of wall time.

    Windows are aligned to the Unix epoch, so the decision for a checkpoint
    never changes when older checkpoints are deleted.
    """

    hours: float

    def __post_init__(self) -> None:
        if (
            isinstance(self.hours, bool)
            or not isinstance(self.hours, (int, float))
            or not self.hours > 0
            or not math.isfinite(self.hours)
        ):
            raise ValueError(f"`hours` must be a positive number. Received: hours={self.hours!r}")

    def keep(self, checkpoints: Sequence[CheckpointInfo]) -> list[str | None]:
        reasons: list[str | None] = [None] * len(checkpoints)
        seen: set[int] = set()
        width = self.hours * 3600.0
        for i, c in enumerate(checkpoints):
            window = math.floor(c.time / width)
            if window not in seen:
                seen.add(window)
                reasons[i] = f"every {self.hours:g} h"
        return reasons


@dataclasses.dataclass(frozen=True)
class AnyOf:
    """Keeps a checkpoint when any of `policies` keeps it (their union)."""

    policies: tuple[RetentionPolicy, ...]

    def __init__(self, *policies: RetentionPolicy) -> None:
        for p in policies:
            if not isinstance(p, RetentionPolicy):
                raise TypeError(
                    "AnyOf takes retention policies (objects with a "
                    f"`keep(checkpoints)` method). Received: {p!r}"
                )
        object.__setattr__(self, "policies", tuple(policies))

    def keep(self, checkpoints: Sequence[CheckpointInfo]) -> list[str | None]:
        reasons: list[list[str]] = [[] for _ in checkpoints]
        for policy in self.policies:
            verdicts = list(policy.keep(checkpoints))
            if len(verdicts) != len(checkpoints):
                raise ValueError(
                    f"Retention policy {policy!r} returned {len(verdicts)} "
                    f"verdicts for {len(checkpoints)} checkpoints."
                )
            for mine, verdict in zip(reasons, verdicts):
                if verdict:
                    mine.append(verdict)
        return [", ".join(r) if r else None for r in reasons]


def from_options(
    *,
    keep_last: int | None,
    keep_best: int,
    monitor: str | None,
    mode: str,
    keep_every_n_epochs: int | None,
    keep_every_n_hours: float | None,
    extra: RetentionPolicy | None = None,
) -> AnyOf:
    """The union of the keyword shortcuts `CheckpointManager` accepts."""
    policies: list[RetentionPolicy] = []
    if keep_last is None:
        policies.append(KeepAll())
    elif keep_last > 0:
        policies.append(KeepLast(keep_last))
    if keep_best and monitor is not None:
        policies.append(KeepBest(keep_best, monitor, mode))
    if keep_every_n_epochs:
        policies.append(KeepEveryNEpochs(keep_every_n_epochs))
    if keep_every_n_hours:
        policies.append(KeepEveryNHours(keep_every_n_hours))
    if extra is not None:
        policies.append(extra)
    return AnyOf(*policies)
