"""A read-only view of a run directory, and restoring from it.

`tfckpt.open(directory)` needs no model: it reads manifests (JSON) only.
Restoring, exporting and pruning after the fact go through the same view.
"""

from __future__ import annotations

import copy
import dataclasses
import os
import tempfile
import warnings
from collections.abc import Mapping
from typing import Any

import tensorflow as tf

from tfckpt import retention
from tfckpt.browse.display import caption, plot_run, table_html, table_text
from tfckpt.browse.export import export_checkpoint
from tfckpt.browse.prune import PruneReport, prune_checkpoints, prune_policy
from tfckpt.browse.restoring import Restorer
from tfckpt.browse.selection import best_by, select
from tfckpt.browse.variables import CheckpointDiff, SavedVariable, diff, saved_variables
from tfckpt.errors import (
    CheckpointNotFoundError,
    DamagedCheckpointError,
    DirectoryLockedError,
    NoIntactCheckpointError,
)
from tfckpt.monitor import rank
from tfckpt.options import KeepRules
from tfckpt.remote.bucket import is_remote
from tfckpt.remote.cache import sync
from tfckpt.store import state_files
from tfckpt.store.checkpoint_store import CheckpointStore
from tfckpt.store.layout import CheckpointRecord, Problem
from tfckpt.store.lock import DirectoryLock

_REPR_ROWS = 5  # rows shown at each end of a long run by repr()
Which = Any  # None | "latest" | "best" | int step | checkpoint name | CheckpointRecord


class CheckpointList(list):
    """A list of `CheckpointRecord`s (oldest first) that Jupyter shows as a table."""

    monitor: tuple[str, str] | None = None

    def _repr_html_(self) -> str:
        return table_html(list(self), self.monitor, [], None)


class Run:
    """The committed checkpoints of a run directory.

    Example:

    ```python
    run = tfckpt.open("runs/exp1")
    for c in run.checkpoints:
        print(c.step, c.epoch, c.metrics, c.kept)
    run.best.path  # a prefix tf.train.Checkpoint.read accepts
    run.restore(model, "best")  # or a step, a name, or epoch=5
    run  # in Jupyter: a table of the checkpoints
    ```
    """

    def __init__(self, directory: str | os.PathLike):
        self.directory = os.fspath(directory)
        self._store = CheckpointStore(self.directory)
        self._restorer = Restorer(
            self._store, self.select, lambda record: self.state(record, cached=False)
        )

    def __repr__(self) -> str:
        records, problems = self._scan()
        text = f"<tfckpt.Run {caption(self.directory, records, records.monitor, problems)}>"
        if not records and not problems:
            return text
        lines = table_text(records, records.monitor, problems)
        if len(lines) > 2 * _REPR_ROWS + 2:  # a long run: its first and last rows, as pandas
            lines = [*lines[: _REPR_ROWS + 1], "...", *lines[-_REPR_ROWS:]]
        return "\n".join([text, *lines])

    def _repr_html_(self) -> str:
        records, problems = self._scan()
        text = caption(self.directory, records, records.monitor, problems)
        return table_html(records, records.monitor, problems, text)

    def _scan(
        self, policy: retention.RetentionPolicy | None = None
    ) -> tuple[CheckpointList, list[Problem]]:
        """Records with the reasons `policy` keeps them for; without a policy,
        the run's own keyword rules as recorded in its newest manifest."""
        records, problems = self._store.scan()
        out = CheckpointList()
        if not records:
            return out, problems
        config = records[-1].manifest.get("retention") or {}
        monitor = records[-1].manifest.get("monitor") or {}
        derived = policy is None
        if policy is None:
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
        out.extend(dataclasses.replace(r, kept=why) for r, why in zip(records, reasons))
        out.monitor = (monitor["name"], monitor["mode"]) if monitor.get("name") else None
        return out, problems

    def kept_by(self, policy: retention.RetentionPolicy) -> CheckpointList:
        """The committed checkpoints, oldest first, each with the reason
        `policy` keeps it (`None`: it would be deleted); the newest is kept."""
        return self._scan(policy)[0]

    @property
    def checkpoints(self) -> CheckpointList:
        """Committed checkpoints, oldest first, each saying why it is kept
        (a list; Jupyter shows it as a table)."""
        return self._scan()[0]

    @property
    def problems(self) -> list[Problem]:
        """Checkpoint directories that are not intact (sizes checked)."""
        return self._scan()[1]

    def shared_bytes(self, record: CheckpointRecord) -> int:
        """Bytes of `record` shared with other checkpoints (incremental
        checkpoints hard-link data files that did not change); the rest,
        `record.size - shared_bytes`, is its own and freed when it is deleted."""
        return self._store.shared_bytes(record)

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
        records = self.checkpoints
        if records.monitor is None:
            return None
        ranked = rank(records, *records.monitor)
        return ranked[0] if ranked else None

    def best_by(self, metric: str, mode: str = "auto") -> CheckpointRecord:
        """The retained checkpoint with the best value of any recorded metric.

        Example:

        ```python
        run.best_by("val_accuracy")             # "auto": accuracy is maximized
        run.best_by("val_loss", mode="min")
        ```

        Args:
            metric: a metric the checkpoints recorded when they were saved
                (epoch-end checkpoints hold the epoch's logs, `val_*` included).
            mode: `"min"`, `"max"`, or `"auto"`: the run's own mode for its
                monitor, `"min"` for losses, else Keras's direction for a
                metric of that name (e.g. accuracy, AUC: max; MAE: min).

        Returns:
            The `CheckpointRecord` with the best value (ties: the oldest,
            as retention ranks them).

        Raises:
            CheckpointNotFoundError: no retained checkpoint recorded `metric`;
                the message lists the metrics that were recorded.
        """
        return best_by(self.checkpoints, metric, mode, self.directory)

    @property
    def history(self) -> dict[str, list]:
        """Per-epoch logs of the whole run, across every process (restart) of it.

        Read from the newest checkpoint (the newest whose state files are
        intact, with a warning for those skipped): metric name -> one value
        per completed epoch (`None` where an epoch did not log it), plus
        `"epoch"` (1-based). A restart from the newest checkpoint carries the
        history on; a run branched from an older checkpoint
        (`restore="best"`) carries on the history of that checkpoint.

        Example:

        ```python
        h = tfckpt.open("runs/exp1").history
        h["epoch"], h["val_loss"]  # [1, 2, ...], [0.61, 0.52, ...]
        ```
        """
        epochs: list[dict[str, Any]] = []
        records = self.checkpoints
        for record in reversed(records):
            try:
                epochs = self.state(record).get("history", [])
                break
            except DamagedCheckpointError as e:
                warnings.warn(f"tfckpt: history: skipping {record.name}: {e}", stacklevel=2)
        else:
            if records:
                raise NoIntactCheckpointError(
                    f"No checkpoint of {self.directory!r} has intact state files to read "
                    "the history from; `tfckpt verify` says why."
                )
        keys = sorted({k for e in epochs for k in e} - {"epoch"})
        out: dict[str, list] = {"epoch": [e["epoch"] for e in epochs]}
        out.update({k: [e.get(k) for e in epochs] for k in keys})
        return out

    @property
    def parent(self) -> dict[str, Any] | None:
        """The checkpoint this run was forked from (`init_from`), or `None`:
        `{"directory", "name", "step", "epoch", "batch", "optimizer"}`."""
        latest = self.latest
        return latest.manifest.get("parent") if latest is not None else None

    @property
    def lineage(self) -> list[dict[str, Any]]:
        """This run's ancestry, nearest first: its parent, the parent's
        parent, and so on (as far as those directories still exist)."""
        chain, parent, seen = [], self.parent, {self.directory}
        while parent is not None and parent["directory"] not in seen:
            chain.append(parent)
            seen.add(parent["directory"])
            try:
                parent = Run(parent["directory"]).parent
            except (OSError, tf.errors.OpError):
                break
        return chain

    def state(self, record: CheckpointRecord, *, cached: bool = True) -> dict[str, Any]:
        """The saver's own state stored with `record` (counters, history)."""
        restored = self._restorer.restored
        key = (record.name, record.seq, record.time)
        if cached and restored is not None and restored[:3] == key:
            # Read with the variables: still there when the writer's retention
            # has deleted the checkpoint since.
            return copy.deepcopy(restored[3])
        return state_files.read(record)

    def select(self, which: Which = None, *, epoch: int | None = None) -> list[CheckpointRecord]:
        """Candidates for a selection, in the order a restore tries them.

        Example:

        ```python
        run.select("best")[0]    # the best checkpoint
        run.select(epoch=5)[0]   # the one saved at the end of epoch 5
        ```

        Args:
            which: `"latest"` (the default), `"best"` (by the run's monitor),
                a step (int), a checkpoint name (`"ckpt-000007"`) or a
                `CheckpointRecord`.
            epoch: instead of `which`: the checkpoints saved at the end of
                epoch `epoch` (`record.epoch == epoch and record.batch == 0`),
                newest first; when none is at that epoch boundary, those saved
                within the next epoch (`record.epoch == epoch`, `batch > 0`),
                the one nearest the boundary first.

        Raises:
            CheckpointNotFoundError: nothing matches (the message lists the
                checkpoints with their steps, and the epochs that have one).
        """
        return select(self.checkpoints, which, epoch, self.directory)

    def first_intact(self, which: Which = None, *, verify: bool = True) -> CheckpointRecord | None:
        """The first checkpoint of the selection `which` whose manifest, sizes
        and small-file checksums check out (no tensor is read); damaged ones
        are marked and skipped. `None` when the run holds no checkpoint."""
        return self._restorer.first_intact(which, verify=verify)

    def restore_into(
        self,
        objects: Mapping[str, Any],
        which: Which = None,
        *,
        epoch: int | None = None,
        strict: bool,
        verify: bool = True,
        mark_damaged: bool = False,
    ) -> CheckpointRecord | None:
        """Restores the first intact candidate of the selection; warns for each skipped.

        A candidate that the run's writer deletes (retention) while it is being
        read is not damage: the selection is made again without it and the
        next candidate is restored, without a warning.

        `mark_damaged=True` records each damaged candidate with a
        `.damaged-<name>` marker, so it no longer counts as the newest. Only
        the writer (the process holding the directory lock) passes it: readers
        never write into a run directory.

        Returns `None` when the directory holds no checkpoint at all.
        """
        return self._restorer.restore_into(
            objects, which, epoch=epoch, strict=strict, verify=verify, mark_damaged=mark_damaged
        )

    def restore(
        self,
        model: Any,
        which: Which = None,
        *,
        epoch: int | None = None,
        optimizer: Any = None,
    ) -> CheckpointRecord:
        """Restores `model` (and `optimizer`, if given) and returns the record.

        Without `optimizer` only the model's variables are restored, which is
        what inference and warm starts need: the model need not be compiled,
        the optimizer values in the checkpoint are skipped without a warning,
        and a compiled model's own optimizer is left as it is (its learning
        rate, step and slots are not taken from the checkpoint; pass
        `optimizer=model.optimizer` to restore them too).

        Example:

        ```python
        model = make_model()              # same architecture
        record = run.restore(model, "best")
        run.restore(model, epoch=5)       # the end of epoch 5
        ```

        Args:
            model: a Keras model of the same architecture (an unbuilt one is
                built from the build config stored with the checkpoint).
            which: `"latest"` (the default), `"best"`, a step (int) or a
                checkpoint name; see `select`.
            epoch: instead of `which`: the checkpoint saved at the end of
                that epoch; see `select`.
            optimizer: also restore this optimizer (to continue training).

        Returns:
            The restored `CheckpointRecord`. A damaged checkpoint is skipped
            with a warning in favour of the next candidate of the selection.
        """
        record = self.restore_into(
            {"model": model, "optimizer": optimizer},
            which,
            epoch=epoch,
            strict=optimizer is not None,
        )
        if record is None:
            raise CheckpointNotFoundError(f"{self.directory!r} holds no committed checkpoint.")
        return record

    def export(
        self,
        model: Any,
        path: str | os.PathLike,
        which: Which = None,
        *,
        epoch: int | None = None,
        format: str | None = None,
        overwrite: bool = False,
    ) -> CheckpointRecord:
        """Writes a checkpoint as a file plain Keras or TF Serving loads.

        The checkpoint's weights are restored into `model` (which is changed),
        then saved by Keras itself, in the format the path's suffix names:

        - `*.weights.h5`: `model.save_weights` (`model.load_weights` reads it);
        - `*.keras`: `model.save`, architecture included
          (`keras.saving.load_model` reads it);
        - no suffix, or `format="tf_saved_model"`: a SavedModel directory for
          TF Serving, by `model.export(path, format="tf_saved_model")`
          (`tf.saved_model.load` reads it).

        It is written under a temporary name in the same directory and renamed
        into place, so a crash never leaves a partial export under `path`.

        Example:

        ```python
        run.export(make_model(), "exports/best.keras")            # the best checkpoint
        run.export(make_model(), "exports/serving", epoch=5)      # a SavedModel
        ```

        Args:
            model: a Keras model of the run's architecture.
            path: a local file or directory path (see above).
            which: the checkpoint: `"best"` (the default), `"latest"`, a step
                or a checkpoint name; see `select`.
            epoch: instead of `which`: the checkpoint at the end of that epoch.
            format: `None` (from the suffix) or `"tf_saved_model"`.
            overwrite: replace an existing `path`; otherwise that is an error.

        Returns:
            The exported `CheckpointRecord`. Only the model's weights come from
            the checkpoint: a `.keras` file holds `model`'s own compile
            config and optimizer, not the checkpoint's optimizer state.
        """
        return export_checkpoint(
            self, model, path, which, epoch=epoch, format=format, overwrite=overwrite
        )

    def prune(
        self,
        *,
        keep_last: int | None = None,
        keep_best: int | None = None,
        keep_every_n_epochs: int | None = None,
        keep_every_n_hours: float | None = None,
        retention: retention.RetentionPolicy | None = None,
        dry_run: bool = True,
    ) -> PruneReport:
        """Applies retention rules after the fact; a dry run by default.

        A checkpoint is kept when any rule keeps it, and the newest one is
        always kept. Only committed, intact checkpoints are ever deleted: a
        checkpoint to delete is first checked (sizes and CRC-32 of every file)
        and a damaged one is left on disk and reported in `damaged`, as are
        directories that are not committed checkpoints.

        With `dry_run=False` it takes the run directory's writer lock, so it
        fails with `DirectoryLockedError` while a training process (or an open
        `CheckpointManager`) writes to the directory, and deletes as the
        manager does (TF's `checkpoint` file first points at what stays, then
        each checkpoint is renamed out of the way and removed).

        Example:

        ```python
        run.prune(keep_last=2, keep_best=1)                 # what would go
        run.prune(keep_last=2, keep_best=1, dry_run=False)  # delete it
        ```

        Args:
            keep_last: keep the N newest checkpoints.
            keep_best: keep the K best by the run's monitor (for another
                metric: `retention=tfckpt.retention.KeepBest(k, metric, mode)`).
            keep_every_n_epochs: keep one checkpoint every N epochs.
            keep_every_n_hours: keep one checkpoint every N hours.
            retention: a `tfckpt.retention.RetentionPolicy`, combined with
                the keyword rules (union).
            dry_run: only report (the default); `False` deletes.

        Returns:
            A `PruneReport`: `.deleted` (or to be deleted), `.kept`,
            `.damaged`, `.bytes_freed`.
        """
        keep = KeepRules(
            keep_last,
            keep_best,
            keep_every_n_epochs,
            keep_every_n_hours,
            retention,  # type: ignore[arg-type]
            none_keeps_all=False,
        )
        policy = prune_policy(self.monitor, self.directory, keep)
        if not isinstance(dry_run, bool):
            raise TypeError(f"`dry_run` must be True or False. Received: dry_run={dry_run!r}")
        if dry_run:
            return prune_checkpoints(self._store, *self._scan(policy), dry_run=True)
        try:
            lock = DirectoryLock(self.directory, exclusive=True)
        except DirectoryLockedError as e:
            raise DirectoryLockedError(f"Cannot prune while a writer is active: {e}") from None
        try:
            return prune_checkpoints(self._store, *self._scan(policy), dry_run=False)
        finally:
            lock.release()

    def _one(self, which: Which) -> CheckpointRecord:
        candidates = self.select(which)
        if not candidates:
            raise CheckpointNotFoundError(f"{self.directory!r} holds no committed checkpoint yet.")
        return candidates[0]

    def variables(self, which: Which = "latest") -> list[SavedVariable]:
        """The variables of one checkpoint under the names users know: each
        weight by its layer path (`"dense/kernel"`), followed by its optimizer
        slots (`slot_of` set), then the rest (`objects=` variables by their
        names, the optimizer's step). Reads no tensor.

        Args:
            which: `"latest"`, `"best"`, a step, a checkpoint name or a record.
        """
        return saved_variables(self._one(which).path)

    def diff(self, a: Which, b: Which) -> CheckpointDiff:
        """How far the weights moved from checkpoint `a` to checkpoint `b`,
        per layer: the norm of the difference and the change relative to
        `a`'s norm (optimizer slots and counters left out). A list of
        `LayerChange` rows; a table in notebooks, `.plot()` for a bar plot.

        Example:

        ```python
        run.diff(10, "latest")        # steps, names, "best", "latest"
        run.diff("best", "latest").plot()
        ```
        """
        ra, rb = self._one(a), self._one(b)
        return diff(ra.path, rb.path, ra.name, rb.name)

    def plot(self, metric: str = "val_loss", *, ax: Any = None, label: str | None = None) -> Any:
        """Draws `metric` over the whole run, with the retained checkpoints
        and the best one marked. Needs matplotlib (`pip install "tfckpt[plot]"`).

        The line is the per-epoch history (every restart included); circles
        are the retained epoch-end checkpoints, a star the run's best
        checkpoint (by its monitor), each at its epoch and its value of
        `metric`. Mid-epoch checkpoints are not drawn.

        Example:

        ```python
        ax = run.plot("val_loss")
        other.plot("val_loss", ax=ax)   # two runs on one axes
        ```

        Args:
            metric: a metric of the run's history (`run.history`).
            ax: a matplotlib `Axes` to draw on; a new figure otherwise.
            label: the legend label of the line (default: the run's name).

        Returns:
            The matplotlib `Axes`.
        """
        return plot_run(self, metric, ax=ax, label=label)


def verify(directory: str | os.PathLike) -> list[tuple[str, str | None]]:
    """Checks every checkpoint of `directory` (sizes and CRC-32 of every file).

    Returns:
        `(name, problem)` for each checkpoint directory, oldest first; `problem`
        is `None` for an intact checkpoint.
    """
    if is_remote(directory):
        # Every object read from the store again (a fresh download), not the cache.
        with tempfile.TemporaryDirectory(prefix="tfckpt-verify-") as scratch:
            synced = sync(os.fspath(directory), directory=os.path.join(scratch, "run"))
            return _verify_local(synced.directory, synced.problems)
    return _verify_local(os.fspath(directory), [])


def _verify_local(directory: str, remote_problems: list[Problem]) -> list[tuple[str, str | None]]:
    store = open_run(directory)._store
    records, problems = store.scan()
    problems = problems + remote_problems
    results = [(r.name, store.check(r)) for r in records]
    # One the writer's retention deleted while it was checked is not damage.
    results = [(n, why) for n, why in results if why is None or not store.vanished(n)]
    results += [(p.name, p.reason) for p in problems]
    return sorted(results, key=lambda nr: nr[0])


def open_run(
    directory: str | os.PathLike, *, storage_options: Mapping[str, Any] | None = None
) -> Run:
    """Opens a run directory read-only (no model, no TF state needed).

    Example:

    ```python
    run = tfckpt.open("runs/exp1")
    run.best, run.history["val_loss"]
    ```

    Args:
        directory: a run directory written by tfckpt (any `tf.io.gfile` path),
            or a remote one (`"s3://bucket/exp1"`, `"gs://..."`, any fsspec
            URL): its published checkpoints are downloaded, verified, into a
            local cache (`$TFCKPT_CACHE`, default `~/.cache/tfckpt`) once,
            and read there.
        storage_options: for a remote URL, passed to fsspec's filesystem.

    Returns:
        A `Run`: `.checkpoints`, `.latest`, `.best`, `.history`,
        `.restore(model, which)`, `.export(...)`, `.prune(...)`, `.plot(...)`.
    """
    directory = os.fspath(directory)
    if is_remote(directory):
        return Run(sync(directory, storage_options, quiet=False).directory)
    try:  # not `isdir`: it says False on any error, not only a missing directory
        is_directory = tf.io.gfile.stat(directory).is_directory
    except tf.errors.NotFoundError:
        is_directory = False
    except tf.errors.OpError as e:
        raise CheckpointStore(directory).read_error(e) from e
    if not is_directory:
        raise FileNotFoundError(f"No checkpoint directory at {directory!r}.")
    return Run(directory)


def restore(
    model: Any,
    directory: str | os.PathLike,
    which: Which = None,
    *,
    epoch: int | None = None,
    optimizer: Any = None,
) -> CheckpointRecord:
    """Restores a checkpoint of `directory` into `model` (e.g. for inference).

    Example:

    ```python
    tfckpt.restore(model, "runs/exp1", "best")
    ```

    Args:
        model: a built Keras model of the same architecture.
        directory: the run directory.
        which: `"latest"` (the default), `"best"`, a step (int) or a
            checkpoint name.
        epoch: instead of `which`: the checkpoint saved at the end of that epoch.
        optimizer: also restore this optimizer (to continue training).

    Returns:
        The restored `CheckpointRecord`. A damaged checkpoint is skipped with a
        warning in favour of the next intact one of the selection.
    """
    return open_run(directory).restore(model, which, epoch=epoch, optimizer=optimizer)


def export(
    model: Any,
    directory: str | os.PathLike,
    path: str | os.PathLike,
    which: Which = None,
    *,
    epoch: int | None = None,
    format: str | None = None,
    overwrite: bool = False,
) -> CheckpointRecord:
    """Writes a checkpoint of `directory` as a file plain Keras or TF Serving loads.

    The checkpoint's weights are restored into `model`, which Keras then saves
    in the format `path`'s suffix names (`.keras`, `.weights.h5`, or a
    SavedModel directory); see `Run.export` for the details.

    Example:

    ```python
    tfckpt.export(make_model(), "runs/exp1", "exports/best.keras")  # the best one
    ```

    Args:
        model: a Keras model of the run's architecture (its weights are replaced).
        directory: the run directory.
        path: a local file or directory path.
        which: `"best"` (the default), `"latest"`, a step or a checkpoint name.
        epoch: instead of `which`: the checkpoint saved at the end of that epoch.
        format: `None` (from the suffix) or `"tf_saved_model"`.
        overwrite: replace an existing `path`; otherwise that is an error.

    Returns:
        The exported `CheckpointRecord`.
    """
    return open_run(directory).export(
        model, path, which, epoch=epoch, format=format, overwrite=overwrite
    )
