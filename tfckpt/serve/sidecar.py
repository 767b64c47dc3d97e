"""`SidecarEvaluator`: evaluates each checkpoint of a run as training goes on,
in a process of its own, and logs the results for TensorBoard and notebooks."""

from __future__ import annotations

import json
import os
from typing import Any

import tensorflow as tf
from tensorflow.core.framework import summary_pb2

from tfckpt.remote.bucket import is_remote
from tfckpt.serve.watch import watch
from tfckpt.store import fs, tf_checkpoint
from tfckpt.store.layout import CheckpointRecord, jsonable

LOG = "evaluations.jsonl"
_WHICH = ("all", "best")
_SCALARS = summary_pb2.SummaryMetadata()
_SCALARS.plugin_data.plugin_name = "scalars"  # TensorBoard's scalars plugin


class SidecarEvaluator:
    """Restores each new checkpoint of a run into `model` (weights only),
    evaluates it on `data`, and writes the results to TensorBoard (scalars
    `evaluation/<metric>` at the checkpoint's step, in `log_dir`) and to
    `log_dir/evaluations.jsonl` (`tfckpt.read_evaluations` reads it back).

    It follows the run with `tfckpt.watch`, so it may start before training
    and ends when training has finished (or after `timeout`); a checkpoint it
    evaluates stays readable even when retention deletes it meanwhile. It
    never writes into the run directory, except the watcher's pin folder
    `.readers/`. Restarted, it skips the checkpoints already in its log (by
    name: a branch's checkpoint at a step already evaluated is evaluated).

    Example:

    ```python
    model = make_model()  # same architecture, compiled with the metrics to report
    tfckpt.SidecarEvaluator(model, val_ds, "runs/exp1", log_dir="runs/exp1-eval").start()
    ```

    Args:
        model: a compiled Keras model of the run's architecture.
        data: what `model.evaluate` takes as `x` (a `tf.data.Dataset`), or a
            tuple `(x, y)` or `(x, y, sample_weight)` of arrays.
        directory: the run directory (being written by the training process).
        steps: batches per evaluation (`None`: all of `data`).
        which: `"all"`: every checkpoint; `"best"`: only those that were a
            new best of the run's monitor when saved.
        log_dir: where results go; defaults to `<directory>-eval` (for a remote
            run, `<its name>-eval` in the working directory). Must not
            be inside the run directory.
        max_evaluations: stop after this many evaluations (`None`: no limit).
        timeout: stop after this many seconds without a new checkpoint
            (`None`: when training has finished).
        poll_interval: seconds between listings of the run directory.
    """

    def __init__(
        self,
        model: Any,
        data: Any,
        directory: str | os.PathLike,
        *,
        steps: int | None = None,
        which: str = "all",
        log_dir: str | os.PathLike | None = None,
        max_evaluations: int | None = None,
        timeout: float | None = None,
        poll_interval: float = 1.0,
    ):
        if not getattr(model, "compiled", False):
            raise ValueError(
                "`model` must be a compiled Keras model (evaluate needs its loss and "
                f"metrics). Received: model={model!r}"
            )
        if data is None:
            raise ValueError("`data` must be what model.evaluate takes. Received: data=None")
        if not isinstance(directory, (str, os.PathLike)) or not os.fspath(directory):
            raise ValueError(
                f"`directory` must be a non-empty path. Received: directory={directory!r}"
            )
        for name, value in (("steps", steps), ("max_evaluations", max_evaluations)):
            if value is not None and (
                isinstance(value, bool) or not isinstance(value, int) or value < 1
            ):
                raise ValueError(
                    f"`{name}` must be None or an integer >= 1. Received: {name}={value!r}"
                )
        if which not in _WHICH:
            raise ValueError(f"`which` must be one of {_WHICH}. Received: which={which!r}")
        directory = os.fspath(directory)
        if log_dir is None:
            # A remote run's evaluations are logged here, beside the evaluator.
            base = os.path.basename(directory.rstrip("/")) if is_remote(directory) else None
            log_dir = (base or directory.rstrip("/")) + "-eval"
        log_dir = os.fspath(log_dir)
        if fs.is_local(directory) and fs.is_local(log_dir):
            run, logs = (os.path.realpath(fs.local_path(p)) for p in (directory, log_dir))
            if logs == run or logs.startswith(run + os.sep):
                raise ValueError(
                    "`log_dir` must be outside the run directory (one writer per run "
                    f"directory). Received: log_dir={log_dir!r} in directory={directory!r}"
                )
        self.model = model
        self.data = data
        self.directory = directory
        self.steps = steps
        self.which = which
        self.log_dir = log_dir
        self.max_evaluations = max_evaluations
        self.timeout = timeout
        self.poll_interval = poll_interval
        self._writer: Any = None
        # Checked now (bad values named), not when the first checkpoint comes.
        watch(directory, timeout=timeout, poll_interval=poll_interval).close()

    def start(self) -> list[dict[str, Any]]:
        """Evaluates checkpoints until training finished (or `timeout`, or
        `max_evaluations`); returns this call's results, oldest first."""
        # By name, not step: a run restarted from an older checkpoint saves
        # steps already evaluated again, as new checkpoints.
        done = {row.get("name") for row in _rows(self.log_dir)}
        results: list[dict[str, Any]] = []
        with watch(
            self.directory, timeout=self.timeout, poll_interval=self.poll_interval
        ) as records:
            for record in records:
                if record.name in done or not self._wanted(record):
                    continue
                results.append(self.evaluate(record))
                done.add(record.name)
                if self.max_evaluations is not None and len(results) >= self.max_evaluations:
                    break
        return results

    def _wanted(self, record: CheckpointRecord) -> bool:
        if self.which == "all":
            return True
        monitor = (record.manifest.get("monitor") or {}).get("name")
        best = record.manifest.get("best") or {}
        return (
            monitor is not None
            and best.get("step") == record.step
            and best.get("epoch") == record.epoch
            and record.metrics.get(monitor) == best.get("value")
        )

    def evaluate(self, record: CheckpointRecord) -> dict[str, Any]:
        """Restores `record` (readable at `record.path`) into the model,
        evaluates it and logs the result; returns the logged row."""
        tf_checkpoint.read_model(self.model, record.path, record.manifest)
        data = self.data
        if isinstance(data, tuple) and 2 <= len(data) <= 3:  # (x, y[, sample_weight])
            inputs = dict(zip(("x", "y", "sample_weight"), data))
        else:
            inputs = {"x": data}
        metrics = self.model.evaluate(**inputs, steps=self.steps, verbose=0, return_dict=True)
        row = {
            "name": record.name,
            "step": record.step,
            "epoch": record.epoch,
            "batch": record.batch,
            "time": record.time,
            "metrics": jsonable(dict(metrics)),
        }
        self._log(row)
        return row

    def _log(self, row: dict[str, Any]) -> None:
        tf.io.gfile.makedirs(self.log_dir)
        if self._writer is None:
            self._writer = tf.summary.create_file_writer(self.log_dir)
        # What tf.summary.scalar writes, without the tensorboard package.
        with self._writer.as_default(step=row["step"]):
            for name, value in row["metrics"].items():
                if isinstance(value, (int, float)) and not isinstance(value, bool):
                    tf.summary.write(
                        f"evaluation/{name}",
                        tf.constant(float(value), tf.float32),
                        metadata=_SCALARS,
                    )
        self._writer.flush()
        path = fs.join(self.log_dir, LOG)
        line = json.dumps(row, sort_keys=True) + "\n"
        # A line cut short by a crash is ended first: it must not swallow this one.
        if fs.is_local(path):
            with open(fs.local_path(path), "a+b") as f:
                if f.seek(0, os.SEEK_END) > 0:
                    f.seek(-1, os.SEEK_END)
                    if f.read(1) != b"\n":
                        line = "\n" + line
                f.write(line.encode())
                f.flush()
                os.fsync(f.fileno())
        else:  # object stores cannot append: the whole file again
            old = fs.read_bytes(path).decode(errors="replace") if tf.io.gfile.exists(path) else ""
            if old and not old.endswith("\n"):
                old += "\n"
            with tf.io.gfile.GFile(path, "w") as f:
                f.write(old + line)


def read_evaluations(log_dir: str | os.PathLike) -> list[dict[str, Any]]:
    """The results a `SidecarEvaluator` logged in `log_dir`, by step (the
    newest row of a step wins); `[]` when there are none yet. A line cut
    short by a crash is skipped.

    Example:

    ```python
    rows = tfckpt.read_evaluations("runs/exp1-eval")
    plt.plot([r["step"] for r in rows], [r["metrics"]["loss"] for r in rows])
    ```

    Args:
        log_dir: the evaluator's `log_dir`.
    """
    rows = {int(row["step"]): row for row in _rows(log_dir)}
    return [rows[s] for s in sorted(rows)]


def _rows(log_dir: str | os.PathLike) -> list[dict[str, Any]]:
    """Every whole row of `log_dir`'s log, in the order they were written."""
    path = fs.join(os.fspath(log_dir), LOG)
    try:
        text = fs.read_bytes(path).decode(errors="replace")
    except tf.errors.NotFoundError:
        return []
    rows = []
    for line in text.splitlines():
        try:
            row = json.loads(line)
            int(row["step"])
        except (ValueError, TypeError, KeyError):
            continue
        if isinstance(row, dict) and isinstance(row.get("metrics"), dict):
            rows.append(row)
    return rows
