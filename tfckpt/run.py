"""A read-only view of a run directory, and restoring from it.

`tfckpt.open(directory)` needs no model: it reads manifests (JSON) only.
"""

from __future__ import annotations

import dataclasses
import warnings
from collections.abc import Mapping
from typing import Any

import tensorflow as tf

from tfckpt import _contents, _fs, _state, retention
from tfckpt.errors import NoIntactCheckpointError
from tfckpt.store import CheckpointRecord, CheckpointStore, Problem

Which = Any  # "latest" | "best" | int step | checkpoint name | CheckpointRecord


class Run:
    """The committed checkpoints of a run directory.

    Example:

    ```python
    run = tfckpt.open("runs/exp1")
    for c in run.checkpoints:
        print(c.step, c.epoch, c.metrics, c.kept)
    run.best.path  # a prefix tf.train.Checkpoint.read accepts
    ```
    """

    def __init__(self, directory: str):
        self.directory = directory
        self._store = CheckpointStore(directory)

    def __repr__(self) -> str:
        n = len(self.checkpoints)
        return f"<tfckpt.Run {self.directory!r}: {n} checkpoint{'s' * (n != 1)}>"

    def _scan(
        self, policy: retention.RetentionPolicy | None = None
    ) -> tuple[list[CheckpointRecord], list[Problem]]:
        """Records with the reasons `policy` keeps them for; without a policy,
        the run's own keyword rules as recorded in its newest manifest."""
        records, problems = self._store.scan()
        if not records:
            return records, problems
        config = records[-1].manifest.get("retention") or {}
        derived = policy is None
        if policy is None:
            monitor = records[-1].manifest.get("monitor") or {}
            policy = retention.from_options(
                keep_last=config.get("keep_last"),
                keep_best=config.get("keep_best") or 0,
                monitor=monitor.get("name"),
                mode=monitor.get("mode", "min"),
                keep_every_n_epochs=config.get("keep_every_n_epochs"),
                keep_every_n_hours=config.get("keep_every_n_hours"),
            )
        reasons = policy.keep(records)
        if derived and config.get("custom"):
            # Retention runs after every commit, so a checkpoint still here that
            # no keyword rule keeps is kept by the run's own (unrecorded) policy.
            reasons = [why or f"custom: {config['custom']}" for why in reasons]
        reasons[-1] = ", ".join(filter(None, ["latest", reasons[-1]]))
        return [dataclasses.replace(r, kept=why) for r, why in zip(records, reasons)], problems

    @property
    def checkpoints(self) -> list[CheckpointRecord]:
        """Committed checkpoints, oldest first, each saying why it is kept."""
        return self._scan()[0]

    @property
    def problems(self) -> list[Problem]:
        """Checkpoint directories that are not intact (sizes checked)."""
        return self._scan()[1]

    @property
    def latest(self) -> CheckpointRecord | None:
        records = self.checkpoints
        return records[-1] if records else None

    @property
    def monitor(self) -> tuple[str, str] | None:
        """`(metric, mode)` the run tracks as best, or `None`."""
        records = self._store.scan()[0]
        info = records[-1].manifest.get("monitor") if records else None
        return (info["name"], info["mode"]) if info else None

    @property
    def best(self) -> CheckpointRecord | None:
        """The retained checkpoint with the best value of the run's monitor."""
        if self.monitor is None:
            return None
        ranked = self._ranked_by_monitor(self.checkpoints)
        return ranked[0] if ranked else None

    def _ranked_by_monitor(self, records: list[CheckpointRecord]) -> list[CheckpointRecord]:
        if self.monitor is None:
            return []
        name, mode = self.monitor
        scored = [
            (v, -r.seq, r) for r in records if (v := retention.metric_value(r, name)) is not None
        ]
        scored.sort(key=lambda t: (t[0] if mode == "min" else -t[0], -t[1]))
        return [r for _, _, r in scored]

    @property
    def history(self) -> dict[str, list]:
        """Per-epoch logs across every process of the run, as of the newest
        checkpoint: metric name -> one value per epoch (`None` where an epoch
        did not log it), plus `"epoch"`."""
        latest = self.latest
        epochs = self.state(latest).get("history", []) if latest else []
        keys = sorted({k for e in epochs for k in e} - {"epoch"})
        out: dict[str, list] = {"epoch": [e["epoch"] for e in epochs]}
        out.update({k: [e.get(k) for e in epochs] for k in keys})
        return out

    def state(self, record: CheckpointRecord) -> dict[str, Any]:
        """The saver's own state stored with `record` (counters, history)."""
        files = record.manifest["files"]
        if _state.STATE not in files:
            return {}
        arrays = None
        if _state.ARRAYS in files:
            arrays = _fs.read_bytes(_fs.join(record.directory, _state.ARRAYS))
        return _state.decode(_fs.read_bytes(_fs.join(record.directory, _state.STATE)), arrays)

    def select(self, which: Which) -> list[CheckpointRecord]:
        """Candidates for `which`, in the order a restore tries them."""
        records = self.checkpoints
        if isinstance(which, CheckpointRecord):
            return [which]
        if which == "latest":
            return records[::-1]
        if which == "best":
            if self.monitor is None:
                raise ValueError(
                    f"which='best': run {self.directory!r} tracks no metric "
                    "(it was saved with monitor=None). Use 'latest' or a step."
                )
            ranked = self._ranked_by_monitor(records)
            if records and not ranked:
                raise ValueError(
                    f"which='best': no checkpoint in {self.directory!r} has a value "
                    f"of {self.monitor[0]!r}."
                )
            return ranked
        if isinstance(which, str) and not isinstance(which, bool):
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
        available = ", ".join(f"{r.name} (step {r.step})" for r in records) or "none"
        raise ValueError(
            f"No checkpoint matches which={which!r} in {self.directory!r}. Available: {available}."
        )

    def restore_into(
        self,
        objects: Mapping[str, Any],
        which: Which = "latest",
        *,
        strict: bool,
        verify: bool = True,
    ) -> CheckpointRecord | None:
        """Restores the first intact candidate of `which`; warns for each skipped.

        Returns `None` when the directory holds no checkpoint at all.
        """
        candidates = self.select(which)
        problems = self._store.scan()[1]
        if not candidates and not problems:
            return None
        for problem in problems:
            warnings.warn(
                f"tfckpt: skipping {problem.name} in {self.directory!r}: "
                f"{problem.reason}. It is left on disk for inspection.",
                stacklevel=3,
            )
        skipped = []
        for record in candidates:
            reason = self._store.check(record, data=False) if verify else None
            if reason is None:
                try:
                    _contents.ensure_built(objects["model"], record.manifest.get("build_config"))
                    _contents.build_optimizer(objects.get("optimizer"), objects["model"])
                    _contents.read(
                        record.path,
                        objects,
                        saved=record.manifest.get("contents"),
                        strict=strict,
                    )
                    return record
                except (tf.errors.OpError, RuntimeError) as e:
                    # TF's per-tensor CRC32C check (DataLossError, or a bare
                    # OpError/RuntimeError from inside a restore function).
                    text = getattr(e, "message", None) or str(e)
                    if not (
                        isinstance(e, tf.errors.DataLossError)
                        or "Checksum does not match" in text
                        or "TensorBundle" in text
                    ):
                        raise
                    reason = f"unreadable data ({text.strip()})"
            skipped.append(record.name)
            self._store.mark_damaged(record.name, reason)
            warnings.warn(
                f"tfckpt: skipping {record.name} in {self.directory!r}: {reason}. "
                "Falling back to the next intact checkpoint; the damaged one is "
                "left on disk for inspection.",
                stacklevel=3,
            )
        damaged = skipped + [p.name for p in problems]
        raise NoIntactCheckpointError(
            f"None of the checkpoints selected by which={which!r} in "
            f"{self.directory!r} is intact (damaged: {', '.join(damaged)}). "
            "Nothing was deleted; run `tfckpt verify` for details."
        )

    def restore(
        self, model: Any, which: Which = "latest", *, optimizer: Any = None
    ) -> CheckpointRecord:
        """Restores `model` (and `optimizer`, if given) and returns the record.

        Without an optimizer only the model's variables are restored, which is
        what inference needs.
        """
        record = self.restore_into(
            {"model": model, "optimizer": optimizer}, which, strict=optimizer is not None
        )
        if record is None:
            raise ValueError(f"{self.directory!r} holds no committed checkpoint.")
        return record


def verify(directory: str) -> list[tuple[str, str | None]]:
    """Checks every checkpoint of `directory` (sizes and CRC-32 of every file).

    Returns:
        `(name, problem)` for each checkpoint directory, oldest first; `problem`
        is `None` for an intact checkpoint.
    """
    store = open_run(directory)._store
    records, problems = store.scan()
    results = [(r.name, store.check(r)) for r in records]
    results += [(p.name, p.reason) for p in problems]
    return sorted(results, key=lambda nr: nr[0])


def open_run(directory: str) -> Run:
    """Opens a run directory read-only (no model, no TF state needed).

    Args:
        directory: a run directory written by tfckpt (any `tf.io.gfile` path).

    Returns:
        A `Run`: `.checkpoints`, `.latest`, `.best`, `.restore(model, which)`.
    """
    if not tf.io.gfile.isdir(directory):
        raise FileNotFoundError(f"No checkpoint directory at {directory!r}.")
    return Run(directory)


def restore(
    model: Any, directory: str, which: Which = "latest", *, optimizer: Any = None
) -> CheckpointRecord:
    """Restores a checkpoint of `directory` into `model` (e.g. for inference).

    Args:
        model: a built Keras model of the same architecture.
        directory: the run directory.
        which: `"latest"`, `"best"`, a step (int) or a checkpoint name.
        optimizer: also restore this optimizer (to continue training).

    Returns:
        The restored `CheckpointRecord`. A damaged checkpoint is skipped with a
        warning in favour of the next intact one of the selection.
    """
    return open_run(directory).restore(model, which, optimizer=optimizer)
