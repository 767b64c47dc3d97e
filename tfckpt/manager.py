"""`CheckpointManager`: saves and restores a model + optimizer with crash-safe
commits, best-metric tracking and retention. The Keras callback drives it from
`model.fit`; custom training loops call it directly."""

from __future__ import annotations

import os
import sys
import traceback
import warnings
import weakref
from collections.abc import Mapping, Sequence
from typing import Any

import tensorflow as tf

from tfckpt import retention as _retention
from tfckpt.errors import (
    CheckpointWriteError,
    CommittedWithError,
    DamagedCheckpointError,
    NoIntactCheckpointError,
)
from tfckpt.monitor import AUTO_MODES, check_mode, direction, is_better
from tfckpt.observers import CheckpointObserver, bind_model, notify
from tfckpt.options import (
    LOCAL_RULE,
    KeepRules,
    check_backend,
    check_flag,
    mirror_options,
    run_options,
    validate_objects,
    validate_observers,
)
from tfckpt.run import Run, Which
from tfckpt.saving import random_state
from tfckpt.saving.fork import fork
from tfckpt.saving.mirror import Mirror
from tfckpt.saving.preemption import (
    PREEMPTION_EXIT_CODE,
    SignalWatch,
    deliver,
    validate_exit_code,
    validate_signals,
)
from tfckpt.saving.retain import apply_retention
from tfckpt.saving.tf_writer import TFWriter
from tfckpt.saving.workers import Workers
from tfckpt.store import fs, state_files, tf_checkpoint
from tfckpt.store.checkpoint_store import CheckpointStore
from tfckpt.store.finished import mark_finished
from tfckpt.store.layout import CheckpointRecord, jsonable, now, versions
from tfckpt.store.lock import DirectoryLock
from tfckpt.store.takeover import take as take_directory

_told_full: set[str] = set()  # directories told once that saves are full


class CheckpointManager:
    """Saves and restores checkpoints of a model, its optimizers and any other
    training state (`objects`).

    Every save is committed atomically (a crash at any point leaves the
    previous checkpoints intact and never a partial one), retention runs only
    after the commit, and the best value of `monitor` is persisted with every
    checkpoint so it survives restarts. Checkpoints are plain
    `tf.train.Checkpoint` files: `tf.train.latest_checkpoint(directory)` finds
    the newest one.

    Example (custom training loop):

    ```python
    manager = tfckpt.CheckpointManager(
        "runs/exp1", model, optimizer, monitor="val_loss", keep_last=3, keep_best=1
    )
    start = manager.restore()  # None on the first run
    for epoch in range(start.epoch if start else 0, epochs):
        ...  # train one epoch
        manager.save(epoch=epoch + 1, metrics={"val_loss": val_loss})
    manager.close()
    ```

    Anything else the loop needs to resume goes in `objects` (an EMA copy of
    the model, a step variable, a `tf.data` iterator):

    ```python
    manager = tfckpt.CheckpointManager(
        "runs/exp1", model, optimizer, objects={"ema": ema_model, "data": iterator}
    )
    ```

    A loop that keeps its state in a `tf.train.Checkpoint` passes it in
    place of the model: it is saved as it is, so `checkpoint.restore(path)`
    reads tfckpt's checkpoints (see also `tfckpt.compat.CheckpointManager`).

    Args:
        directory: run directory (any `tf.io.gfile` path: local, `ram://`,
            `gs://`...). Created if missing.
        model: the Keras model (built before `restore`); `None` when
            `objects` hold everything; or a `tf.train.Checkpoint`, saved as
            it is (its children under their names, and its `save_counter`).
        optimizer: the optimizer to save with it. Defaults to
            `model.optimizer` when the model is compiled. Optimizers the model
            holds as attributes (a GAN's two) are saved with the model.
        objects: more to save and restore with each checkpoint, name ->
            trackable: a `tf.Variable`, a Keras model or layer, a `tf.Module`,
            a `tf.data` iterator (`iter(dataset)`). Each checkpoint stays a
            plain TF checkpoint, with these under their names.
        monitor: metric whose best value is tracked, or `None`.
        mode: `"auto"` (the default: `min` for losses, else the direction
            Keras knows for a metric of that name), `"min"` or `"max"`.
        restore_random_state: save Keras's, NumPy's and Python's random
            state with each checkpoint (unless `save(state=...)` holds an
            `"rng"` of its own) and put it back on `restore`, so that a loop
            with Dropout or random augmentation resumes exactly.
        keep_last: keep the N newest checkpoints (`None`: keep all).
        keep_best: keep the K best by `monitor` (defaults to 1 with a
            monitor, 0 without).
        keep_every_n_epochs: also keep one checkpoint every N epochs.
        keep_every_n_hours: also keep one checkpoint every N hours.
        retention: an extra `tfckpt.retention.RetentionPolicy`; a checkpoint
            is kept when any rule keeps it. The newest is always kept.
        verify: verify checksums before restoring (skipping damaged
            checkpoints in favour of the newest intact one).
        async_save: `save` returns once a consistent copy of the state is
            taken; writing, fsync, commit and retention run in a background
            thread. At most one save is in flight: the next `save` (and
            `restore`, `wait`, `close`) waits for it and raises its error.
            It holds a host copy of the state; when to choose it: "Sync or
            async?" in docs/performance.md.
        fsync: make each checkpoint durable before it counts (fsync of files
            and directories). `False` is faster; a crashed process still
            never leaves a torn checkpoint, but a power loss may lose the
            newest ones.
        incremental: store large tensors in data files of their own, and
            hard-link a file whose bytes did not change since the newest
            checkpoint instead of keeping a new copy (frozen layers cost disk
            space once). Each checkpoint stays a complete TF checkpoint, and
            deleting one never affects another. Local disks only; elsewhere
            (object stores, `ram://`) checkpoints are saved in full.
        observers: `tfckpt.CheckpointObserver`s called after each commit and
            each deletion (also `manager.observers`, a list you may append to).
        mirror: a remote run directory (`"s3://bucket/exp1"`, `"gs://..."`,
            any fsspec URL) that each checkpoint is uploaded to in the
            background after its local commit (see "Checkpoints in the
            cloud"). When the local directory holds nothing newer (a new
            machine), the newest intact checkpoint there is downloaded first.
        mirror_every: upload every Nth checkpoint (int), or at most one per
            interval (`datetime.timedelta`). The newest checkpoint is always
            uploaded at `close()`.
        mirror_keep_last: the remote tier's `keep_last` (default: as locally).
        mirror_keep_best: the remote tier's `keep_best` (default: as locally).
        storage_options: passed to fsspec's filesystem for `mirror`
            (credentials, `endpoint_url`, ...); never logged.
        preemption_signals: signals that announce a preemption (e.g.
            `(signal.SIGTERM,)`); `None` (default) leaves signals alone. Then
            call `preemption_point(step)` once per step.
        preemption_exit_code: status `preemption_point` exits with after its
            save (default 42, as TF's `PreemptionCheckpointHandler`); `None`
            makes it return `True` instead.

    Multi-worker (`tf.distribute.MultiWorkerMirroredStrategy`, taken from the
    model): every worker creates the manager and calls `save`, `restore` and
    `preemption_point` at the same steps, since TF may need all of them for a
    save. Only the chief commits into `directory` (shared storage, e.g.
    `gs://`); the other workers write to a local temporary directory that is
    removed at once, and never take the lock, apply retention or touch the run
    directory. `restore` restores, on every worker, the checkpoint the chief
    picked.
    """

    def __init__(
        self,
        directory: str | os.PathLike,
        model: Any,
        optimizer: Any = None,
        *,
        objects: Mapping[str, Any] | None = None,
        monitor: str | None = None,
        mode: str = "auto",
        keep_last: int | None = 3,
        keep_best: int | None = None,
        keep_every_n_epochs: int | None = None,
        keep_every_n_hours: float | None = None,
        retention: _retention.RetentionPolicy | None = None,
        verify: bool = True,
        async_save: bool = False,
        fsync: bool = True,
        incremental: bool = True,
        preemption_signals: Any = None,
        preemption_exit_code: int | None = PREEMPTION_EXIT_CODE,
        observers: Sequence[CheckpointObserver] | None = None,
        restore_random_state: bool = True,
        mirror: str | None = None,
        mirror_every: Any = 1,
        mirror_keep_last: Any = LOCAL_RULE,
        mirror_keep_best: Any = LOCAL_RULE,
        storage_options: Mapping[str, Any] | None = None,
    ):
        check_backend()
        if keep_best is None:
            keep_best = 1 if monitor is not None else 0
        keep = KeepRules(keep_last, keep_best, keep_every_n_epochs, keep_every_n_hours, retention)
        self.directory = directory = run_options(directory, monitor, keep)
        mirrored = mirror_options(
            mirror, mirror_every, mirror_keep_last, mirror_keep_best, storage_options, keep
        )
        # A caller's own tf.train.Checkpoint: the root of every save.
        self._root: tf.train.Checkpoint | None = None
        if isinstance(model, tf.train.Checkpoint):
            if optimizer is not None or objects:
                raise ValueError(
                    "A tf.train.Checkpoint passed as `model` holds everything to save: "
                    "put the optimizer and other objects in it. Received: "
                    f"optimizer={type(optimizer).__name__}, objects={objects!r}"
                )
            self._root, model = model, None
        self.model = model
        self.optimizer = optimizer if optimizer is not None else getattr(model, "optimizer", None)
        self.objects = validate_objects(objects)
        self.restore_random_state = check_flag("restore_random_state", restore_random_state)
        self.monitor = monitor
        self.mode = mode = _direction(monitor, mode, model)
        self.verify = verify
        self._policy = keep.policy(monitor, mode)
        self._retention_config = {
            "keep_last": keep_last,
            "keep_best": keep_best,
            "keep_every_n_epochs": keep_every_n_epochs,
            "keep_every_n_hours": keep_every_n_hours,
            "custom": repr(retention) if retention is not None else None,
        }
        self.directory_key = os.path.realpath(directory) if fs.is_local(directory) else directory
        self.incremental = check_flag("incremental", incremental) and fs.is_local(directory)
        if incremental and not self.incremental and directory not in _told_full:
            _told_full.add(directory)
            warnings.warn(
                f"tfckpt: {directory!r} is not on a local disk, where incremental "
                "checkpoints hard-link unchanged files: saving full checkpoints. Pass "
                "incremental=False to say so.",
                stacklevel=2,
            )
        self._store = CheckpointStore(
            directory, fsync=fsync, share_files=self.incremental, background=bool(async_save)
        )
        self._run = Run(directory)
        self._strategy = getattr(model, "distribute_strategy", None) or tf.distribute.get_strategy()
        self._workers = Workers(self._strategy)
        self._multi_worker = self._workers.multi
        self.is_chief = self._workers.is_chief
        if self._multi_worker and async_save:
            raise ValueError(
                "`async_save=True` is not supported with a multi-worker strategy "
                "(every worker must take part in each save at the same point). "
                "Received: async_save=True"
            )
        self.preemption_exit_code = validate_exit_code("preemption_exit_code", preemption_exit_code)
        self._signals = SignalWatch(validate_signals("preemption_signals", preemption_signals))
        self._best = None
        # How the last `restore(optimizer="auto")` found the training phase
        # changed (its optimizer then left as it was), or `None`.
        self.phase_change: str | None = None
        self.async_save = bool(async_save)
        iterators = [k for k, v in self.objects.items() if isinstance(v, tf.data.Iterator)]
        if self.async_save and iterators:
            # Measured: TF's background copy of an iterator changes the
            # batches the loop draws next.
            raise ValueError(
                "`objects` holding a tf.data iterator need async_save=False: a "
                "background save of an iterator changes what it yields next. "
                f"Received: async_save=True with objects[{iterators[0]!r}] an iterator"
            )
        self._writer = TFWriter(
            self._store,
            self._objects,
            async_save=self.async_save and self.is_chief,
            incremental=self.incremental,
        )
        self.observers: list[CheckpointObserver] = validate_observers(observers)
        bind_model(self.observers, model)
        self.parent: dict | None = None  # the checkpoint this run was forked from
        self._lock: DirectoryLock | None = None
        self._closed = False
        self._was_finished = False  # the run had ended normally when this took it
        self._seq_at_start: int | None = None
        self._mirror: Mirror | None = None
        if not self.is_chief:
            self._signals.install()
            return  # a non-chief worker never writes into the run directory
        taken = take_directory(self._store, fsync=fsync, owner=_created_at())
        self._lock = taken.lock
        # A manager dropped without close() (a fit that raised) frees the directory.
        weakref.finalize(self, self._lock.release)
        self._was_finished = taken.was_finished
        records = taken.records
        if mirrored is not None:
            try:
                records = self._start_mirror(mirrored, records)
            except BaseException:
                self._lock.release()
                raise
        self._seq_at_start = records[-1].seq if records else None
        self._best = self._best_from(records[-1] if records else None)
        if records:  # a resumed fork keeps recording its parent
            self.parent = records[-1].manifest.get("parent")
        self._signals.install()
        if self.async_save and self._root is None:
            # The first save's host copies, made while training starts. Only
            # a head start: if it fails, the first save makes them.
            try:
                self._writer.prepare(self._variables())
            except Exception:
                pass

    def _start_mirror(
        self, options: Any, records: list[CheckpointRecord]
    ) -> list[CheckpointRecord]:
        """Takes the remote tier; brings its newest checkpoint here when the
        local directory holds nothing newer (a new machine)."""
        self._mirror = Mirror(self._store, options, monitor=self.monitor, mode=self.mode)
        self._mirror.start(say=_say)
        try:
            if self._mirror.fetch_newest(records, say=_say) is not None:
                records = self._store.scan()[0]
        except BaseException:
            self._mirror.close(None, finished=False)  # the lease back, the thread ended
            raise
        return records

    @property
    def mirror(self) -> Mirror | None:
        """The remote tier (`mirror=`): its `url`, `uploads` (name, bytes sent,
        bytes copied inside the store, seconds) and `published` checkpoints."""
        return self._mirror

    # ---- state ---------------------------------------------------------

    def _objects(self) -> dict[str, Any] | tf.train.Checkpoint:
        """What a save writes: the caller's own `tf.train.Checkpoint`, or
        the model, its optimizer and `objects` by name."""
        if self._root is not None:
            return self._root
        return {"model": self.model, "optimizer": self.optimizer, **self.objects}

    def _saved_objects(self) -> dict[str, Any]:
        """What a save writes, name -> object."""
        if self._root is not None:
            self._root.save_counter  # noqa: B018 - saved with it; the property creates it
            return dict(tf.train.TrackableView(self._root).children(self._root))
        return {k: v for k, v in self._objects().items() if v is not None}

    def _variables(self, saved: dict[str, Any] | None = None) -> list[Any]:
        """The variables a save writes now (`saved`: `_saved_objects()`,
        needed with the caller's own tf.train.Checkpoint)."""
        extra = saved if self._root is not None else self.objects
        return tf_checkpoint.variables(self.model, self.optimizer, extra)

    def _best_from(self, record: CheckpointRecord | None) -> dict | None:
        if record is None or self.monitor is None:
            return None
        best = record.manifest.get("best")
        info = record.manifest.get("monitor") or {}
        if best and info.get("name") == self.monitor and info.get("mode") == self.mode:
            return dict(best)
        return None

    @property
    def checkpoints(self) -> list[CheckpointRecord]:
        """Committed checkpoints, oldest first, each saying why it is kept."""
        return self._run.kept_by(self._policy)

    @property
    def latest(self) -> CheckpointRecord | None:
        return self._run.latest

    @property
    def best(self) -> CheckpointRecord | None:
        """The retained checkpoint with the best `monitor` value."""
        return self._run.best if self.monitor is not None else None

    @property
    def best_value(self) -> dict | None:
        """The best value ever seen by this run: `{"value", "step", "epoch"}`."""
        return dict(self._best) if self._best else None

    def state(self, record: CheckpointRecord) -> dict[str, Any]:
        """The `state` dict that was saved with `record`."""
        return self._run.state(record)

    # ---- save ----------------------------------------------------------

    def save(
        self,
        step: int | None = None,
        *,
        epoch: int = 0,
        batch: int = 0,
        metrics: Mapping[str, Any] | None = None,
        state: Mapping[str, Any] | None = None,
        supersede: bool = False,
    ) -> CheckpointRecord | None:
        """Writes, commits and returns a checkpoint, then applies retention.

        With `async_save=True` it returns `None` as soon as the state is
        copied; `wait()` returns the record once it is committed.

        Args:
            step: global step; defaults to the optimizer's iterations.
            epoch: epochs completed.
            batch: batches completed in the epoch in progress.
            metrics: metric values at this point (JSON-able numbers).
            state: extra JSON-able state to store with the checkpoint.
            supersede: this checkpoint is the newest one saved again with
                later changes (e.g. made by callbacks at the same epoch end):
                once it is committed, the newest earlier checkpoint at the same
                step and epoch is deleted, whatever retention says.
        """
        # At most one save in flight; raises the previous one's error. Not
        # `wait()`: the removal of checkpoints retention deleted goes on beside
        # this save (`begin` waits for it only when the space is needed).
        self._writer.wait()
        lost = self._lock.lost if self._lock is not None else None
        if lost:
            raise CheckpointWriteError(
                f"Not saving into {self.directory!r}: {lost}. This process's lease ran "
                "out, so another writer may be writing there; stop one of them."
            )
        if step is None:
            step = tf_checkpoint.optimizer_step(self.optimizer) if self.optimizer is not None else 0
        metrics = jsonable(dict(metrics or {}))
        best = self._best
        if self.monitor is not None:
            value = metrics.get(self.monitor)
            if isinstance(value, (int, float)) and is_better(
                value, best["value"] if best else None, self.mode
            ):
                best = {"value": value, "step": int(step), "epoch": int(epoch)}
        saved = self._saved_objects()
        variables = self._variables(saved)
        metadata = {
            "step": int(step),
            "epoch": int(epoch),
            "batch": int(batch),
            "metrics": metrics,
            "time": now(),
            "monitor": {"name": self.monitor, "mode": self.mode} if self.monitor else None,
            "best": best,
            "retention": self._retention_config,
            "contents": [*saved, *({tf_checkpoint.SAVE_COUNTER} - set(saved))],
            "build_config": tf_checkpoint.build_config(self.model),
            "phase": tf_checkpoint.phase(self.model, self.optimizer),
            "parent": self.parent,
            "versions": versions(),
        }
        if supersede:
            metadata["supersedes"] = True
        if not self.is_chief:
            self._workers.write_elsewhere(self._writer.checkpoint(variables))
            self._best = best
            return None
        state = dict(state or {})
        if self.restore_random_state and "rng" not in state:
            state["rng"] = random_state.random_state(self.model)
        files = state_files.encode(state) if state else {}
        pending = self._store.begin(tf_checkpoint.state_bytes(variables))
        self._writer.write(pending, variables)
        if self.async_save:
            self._writer.submit(self._complete, pending, metadata, files, best)
            return None
        return self._complete(pending, metadata, files, best, written=True)

    def _complete(self, pending, metadata, files, best, written=False) -> CheckpointRecord:
        if not written:
            self._writer.written(pending)  # TF's background write of this checkpoint
        try:
            record = self._store.finish(pending, metadata, files)
            error = None
        except CommittedWithError as e:
            # Committed all the same: it counts (best value, observers,
            # retention) and the error is raised once that is done.
            record, error = e.record, e
        self._best = best
        notify(self.observers, "on_commit", record)
        try:
            superseded = []
            if metadata.get("supersedes"):
                earlier = self._store.scan()[0][:-1][-1:]
                point = (record.step, record.epoch, record.batch)
                superseded = [r for r in earlier if (r.step, r.epoch, r.batch) == point]
            deleted, retention_error = apply_retention(
                self._store, self._policy, record, superseded
            )
        except (OSError, tf.errors.OpError) as e:
            deleted = []
            retention_error = CheckpointWriteError(
                f"Checkpoint {record.name} is committed in {self.directory!r}, but "
                f"retention could not list the checkpoints: {getattr(e, 'message', e)}. "
                "Nothing was deleted."
            )
        for record_deleted in deleted:
            notify(self.observers, "on_delete", record_deleted)
        if self._mirror is not None:
            self._mirror.committed(record)
        if error is None and retention_error is not None:
            error = CommittedWithError(str(retention_error), record)
            error.__cause__ = retention_error
        if error is not None:
            raise error
        return record

    def wait(self) -> CheckpointRecord | None:
        """Waits for the save in flight (async) and returns its record; raises
        the error it failed with. Returns `None` when nothing is in flight."""
        try:
            return self._writer.wait()
        finally:
            self._store.drain()  # deleted checkpoints' space is free again

    # ---- restore -------------------------------------------------------

    def restore(
        self, which: Which = "latest", *, optimizer: bool | str = True
    ) -> CheckpointRecord | None:
        """Restores the model and optimizer; returns the record, or `None` when
        the directory holds no checkpoint yet.

        Args:
            which: `"latest"`, `"best"`, a step (int), a checkpoint name or a
                `CheckpointRecord`. A damaged checkpoint is skipped with a
                warning and the next intact one of the selection is restored.
            optimizer: also restore the optimizer's state. `"auto"`: only when
                the checkpoint was saved in this training phase (the same
                optimizer classes and trainable variables); otherwise the
                optimizer is left as it is and `phase_change` says what changed.
        """
        self.wait()
        objects = self._objects()
        self.phase_change = None
        if optimizer == "auto":
            chosen = self._run.select(which)
            if chosen:
                self.phase_change = tf_checkpoint.phase_change(
                    chosen[0].manifest.get("phase"), self.training_phase(chosen[0])
                )
            optimizer = self.phase_change is None
        if not optimizer and self._root is None:
            objects.pop("optimizer")
        with self._strategy.scope():  # optimizer slots are created as the model's variables
            if not self._multi_worker:
                try:
                    record = self._run.restore_into(
                        objects, which, strict=True, verify=self.verify, mark_damaged=True
                    )
                except NoIntactCheckpointError:
                    if self._mirror is None or which not in ("latest", None):
                        raise
                    # Every local checkpoint is damaged: the remote tier's newest.
                    damaged = {p.name for p in self._run.problems}
                    if self._mirror.fetch_newest([], skip=damaged, say=_say) is None:
                        raise
                    record = self._run.restore_into(
                        objects, "latest", strict=True, verify=self.verify, mark_damaged=True
                    )
            else:
                record = self._restore_chiefs_pick(which, objects)
        if record is not None:
            self._best = self._best_from(record)
            if self.restore_random_state:
                self._restore_random_state(record)
        return record

    def training_phase(self, record: CheckpointRecord | None = None) -> dict[str, Any]:
        """This model's training phase (see `tf_checkpoint.phase`), the model
        built first from `record`'s build config if it is not built yet."""
        if record is not None:
            tf_checkpoint.ensure_built(self.model, record.manifest.get("build_config"))
        return tf_checkpoint.phase(self.model, self.optimizer)

    def _restore_random_state(self, record: CheckpointRecord) -> None:
        try:
            rng = self._run.state(record).get("rng")
        except (tf.errors.OpError, OSError) as e:
            raise self._store.read_error(e, record.name) from e
        if rng is not None:
            try:
                random_state.set_random_state(self.model, rng)
            except (TypeError, ValueError, KeyError, IndexError) as e:
                raise DamagedCheckpointError(
                    f"The random state saved with checkpoint {record.name} in "
                    f"{self.directory!r} is not what tfckpt wrote ({e!r})."
                ) from None

    def _restore_chiefs_pick(
        self, which: Which, objects: dict[str, Any]
    ) -> CheckpointRecord | None:
        record = self._workers.agree_on(
            lambda: self._run.first_intact(which, verify=self.verify),
            lambda seq: next((r for r in self._run.checkpoints if r.seq == seq), None),
            self.directory,
        )
        if record is None:
            return None
        return self._run.restore_into(objects, record, strict=True, verify=False, mark_damaged=True)

    def init_from(
        self, source: Any, *, optimizer: bool = True
    ) -> tuple[CheckpointRecord, dict[str, Any]]:
        """Warm-starts this (new) run from a checkpoint of another run, and
        records it as the parent in every checkpoint this run saves.

        Args:
            source: `"DIR"` (its latest checkpoint), `"DIR@best"`,
                `"DIR@latest"`, `"DIR@STEP"`, `"DIR@epoch=N"`, `"DIR@ckpt-NNNNNN"`,
                or a `CheckpointRecord` (e.g. `tfckpt.open(dir).best`).
            optimizer: also restore the optimizer state (slots, step), when
                the checkpoint was saved in the same training phase (the same
                optimizer classes and trainable variables; otherwise
                `phase_change` says what changed). `False` restores the model
                only, for a new optimizer or learning rate.

        Returns:
            The parent's record, and the state saved with it.
        """
        if self.model is None:
            raise ValueError(
                "init_from() warm-starts a Keras model: this manager has none "
                "(model=None or a tf.train.Checkpoint). Restore the parent's checkpoint "
                "yourself: checkpoint.restore(tfckpt.open(DIR).latest.path)."
            )
        with self._strategy.scope():
            record, state, self.parent, self.phase_change = fork(
                source,
                self.model,
                self.optimizer,
                with_optimizer="auto" if optimizer else False,
                verify=self.verify,
            )
        return record, state

    # ---- preemption ----------------------------------------------------

    def preemption_requested(self) -> bool:
        """Whether one of `preemption_signals` has reached this process or,
        multi-worker, any worker (then every worker must call it at the same
        steps: it is one small all-reduce)."""
        flag = int(self._signals.received is not None)
        if self._multi_worker:
            flag = self._workers.sum([flag])[0]
        return bool(flag)

    def acknowledge_preemption(self) -> None:
        """Marks the preemption signal received as acted on (saved for): at
        `close()` it is not delivered again to the handlers from before.
        `preemption_point` calls it; a caller that saves on preemption itself
        calls it first."""
        self._signals.handled = True

    def preemption_point(
        self,
        step: int | None = None,
        *,
        epoch: int = 0,
        batch: int = 0,
        metrics: Mapping[str, Any] | None = None,
        state: Mapping[str, Any] | None = None,
    ) -> bool:
        """Call once per training step, after it. When a preemption signal has
        reached this process (or, multi-worker, any worker), saves this step
        (the arguments are those of `save`), waits for the commit, then exits
        with `preemption_exit_code`, or returns `True` when that is `None`.
        Returns `False` otherwise.

        Multi-worker, every worker must call it at every step: the workers
        agree through one small all-reduce per call, so all save the same step.
        """
        if not self.preemption_requested():
            return False
        self.acknowledge_preemption()
        self.save(step, epoch=epoch, batch=batch, metrics=metrics, state=state)
        self.wait()
        if self.preemption_exit_code is None:
            return True
        self.close(finished=False)
        raise SystemExit(self.preemption_exit_code)

    def close(self, *, finished: bool | None = None) -> None:
        """Waits for a save in flight, then releases the directory.

        Args:
            finished: whether training ended normally. Then the directory is
                marked so, and `tfckpt.watch` on it ends once it has yielded
                every checkpoint; otherwise watchers follow a restarted run on.
                `None` (default): finished unless an exception is propagating
                (a `close()` in a `finally:` or `__exit__` after an error).
        """
        if finished is None:
            finished = sys.exc_info()[0] is None
        try:
            self.wait()
            if self._mirror is not None and not self._closed:
                latest = self._run.latest
                self._mirror.close(latest, finished=finished)
            if self._lock is not None and not self._closed:
                if finished or self._unchanged_since_finished():
                    mark_finished(self.directory)
        finally:
            if self._mirror is not None and self._closed is False:
                self._mirror.close(None, finished=False)  # an error above: lease back
            self._closed = True
            self._writer.close()
            self._store.close()
            pending = self._signals.uninstall()
            if self._lock is not None:
                self._lock.release()
            deliver(pending)

    def _unchanged_since_finished(self) -> bool:
        """Whether the run had finished when this manager took it and nothing
        was committed since (e.g. a fit that failed to restore): it is put back
        as it was, finished."""
        if not self._was_finished:
            return False
        try:
            latest = self._store.scan()[0][-1:]
        except Exception:
            return False
        return [r.seq for r in latest] == [self._seq_at_start]

    def __enter__(self) -> CheckpointManager:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close(finished=exc[0] is None)


def _say(text: str) -> None:
    print(f"tfckpt: {text}", file=sys.stderr, flush=True)


def _created_at() -> str:
    """Where the user's code created this manager (or the fit that did), for
    the error of a second writer of the same directory in this process."""
    for frame in reversed(traceback.extract_stack()[:-2]):
        if not any(part in frame.filename for part in ("/tfckpt/", "/keras/", "/tensorflow/")):
            return f"a CheckpointManager (or fit) started at {frame.filename}:{frame.lineno}"
    return "a CheckpointManager"


def _direction(monitor: str | None, mode: str, model: Any) -> str:
    """`mode`, with `"auto"` resolved for `monitor` (see `monitor.direction`)."""
    check_mode(mode, AUTO_MODES)
    if mode != "auto" or monitor is None:
        return "min" if mode == "auto" else mode
    found = direction(monitor, getattr(model, "metrics", None) or [])
    if found is None:
        raise ValueError(
            f"CheckpointManager cannot tell whether monitor={monitor!r} should be "
            "minimized or maximized (it is neither a loss nor a metric Keras knows). "
            "Pass mode='min' or mode='max'."
        )
    return found
