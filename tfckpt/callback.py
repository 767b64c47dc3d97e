"""`CheckpointCallback`: the Keras glue over `CheckpointManager`."""

from __future__ import annotations

import os
import signal
import warnings
from typing import Any

import keras

from tfckpt.fit.session import FitSession
from tfckpt.manager import CheckpointManager
from tfckpt.monitor import AUTO_MODES, check_mode
from tfckpt.options import (
    LOCAL_RULE,
    KeepRules,
    check_backend,
    check_choice,
    check_flag,
    check_restore,
    check_save_freq,
    mirror_options,
    parse_source,
    run_options,
    validate_objects,
    validate_observers,
)
from tfckpt.saving.preemption import PREEMPTION_EXIT_CODE, validate_exit_code, validate_signals
from tfckpt.store.layout import CheckpointRecord


class CheckpointCallback(keras.callbacks.Callback):
    """Saves checkpoints during `fit`, keeps the right ones, and resumes after a crash.

    Pass it to `model.fit`; when the process dies and the same script runs
    again, training continues from the newest intact checkpoint: weights,
    optimizer slots and step, learning-rate schedule position, the epoch
    counter and the best-metric record are restored, with no flag to change.

    Example:

    ```python
    cb = tfckpt.CheckpointCallback("runs/exp1", monitor="val_loss",
                                   keep_last=3, keep_best=1)
    model.fit(x, y, validation_data=(xv, yv), epochs=50, callbacks=[cb])
    # killed at epoch 17? Run the same script again: it continues at epoch 17.
    ```

    The rule for a later `fit` with the same directory: **an interrupted
    `fit` is resumed, a completed one is trained on.** After a `fit` that an
    exception ended (Ctrl-C in a notebook, an error, an OOM) or that a
    preemption signal stopped, the next `fit(epochs=N)` continues the run up to
    epoch N from the newest intact checkpoint, in a new process or in the same
    one. After a `fit` that completed, a later `fit` on the same model in the
    same process trains on from where the model is, like Keras does (e.g.
    fine-tuning after a recompile): nothing is restored over it, and the
    directory's epoch counter carries on.

    Each epoch's checkpoint is durable before this callback's `on_epoch_end`
    returns. Callbacks listed after it that change the state at the same
    epoch end (ReduceLROnPlateau's learning rate, EarlyStopping's counters,
    anything that draws random numbers) are checked once they have all run:
    if they changed the optimizer's scalars, their saved state or the random
    state, the epoch is saved again with their changes, and that checkpoint
    replaces the first one. With `async_save=True` (durable only once the
    background write ends) each epoch is saved once, after every callback.

    Args:
        directory: run directory (any `tf.io.gfile` path). Created if missing.
        monitor: metric whose best value is tracked and persisted across
            restarts (`None` turns best tracking off).
        mode: `"auto"`, `"min"` or `"max"`. `"auto"` picks `min` for losses
            and the compiled metric's own direction otherwise.
        save_freq: `"epoch"`, or an int N to save every N training batches
            (counted across epochs). With an int, an epoch end is also saved
            when the monitored metric is available, so best tracking works.
        keep_last: keep the N newest checkpoints (`None` keeps all).
        keep_best: keep the K best by `monitor`. Defaults to 1 when `monitor`
            is set and 0 otherwise.
        keep_every_n_epochs: also keep one checkpoint every N epochs.
        keep_every_n_hours: also keep one checkpoint every N hours.
        restore: what to restore when `fit` starts: `"latest"`, `"best"`, a
            step (int), or `False` for nothing. Nothing is restored when the
            model in memory is already at or past the directory's newest
            checkpoint.
        retention: an extra `tfckpt.retention.RetentionPolicy` (union with
            the rules above).
        on_save_error: `"raise"` (default) stops training when a save fails
            with an OS error (disk full, I/O error, permission); `"warn"` warns
            and trains on, for users who would rather lose a checkpoint than a
            run. Either way no partial checkpoint is left and earlier ones are
            intact. Other errors are always raised.
        restore_random_state: on resume, restore the random state saved with
            the checkpoint (every Keras `SeedGenerator` of the model, Keras's
            global one, NumPy's and Python's global generators), so Dropout,
            noise and augmentation layers draw what the uninterrupted run drew.
            `False` gives fresh randomness on resume.
        async_save: block `fit` only while a consistent copy of the state is
            taken; the write, fsync, commit and retention run in the
            background, one save at a time (the next one waits). A failure is
            raised at the next save or at the end of `fit`, never lost. It
            holds a host copy of the state, and where training keeps every
            core busy it costs as much throughput as a sync save (the write
            is CPU work too); see "Sync or async?" in docs/performance.md.
        fsync: fsync each checkpoint before it counts (default). `False` is
            faster; a killed process still never leaves a torn checkpoint,
            but a power loss may lose the newest ones.
        incremental: a data file whose bytes did not change since the newest
            checkpoint (frozen layers) is hard-linked, not stored again
            (default; local disks only). Every checkpoint stays complete.
        init_from: start a new run from another run's checkpoint (a fork,
            or a warm start): `"runs/exp1@best"`, `"runs/exp1"` (its latest),
            `"DIR@STEP"`, `"DIR@epoch=N"`, `"DIR@ckpt-NNNNNN"` or a
            `CheckpointRecord`. Used only while `directory` holds no checkpoint
            (a rerun after a crash resumes the new run). The epoch counter,
            history and random state carry on from the parent, and every
            checkpoint of the new run records the parent (`tfckpt.open(dir).parent`).
        init_optimizer: with `init_from`, also take the parent's optimizer
            state (slots and step). `False` starts the optimizer afresh, e.g.
            for a new learning rate or another optimizer.
        observers: `tfckpt.CheckpointObserver`s called after each checkpoint
            is committed and after each one retention deletes (e.g.
            `tfckpt.TensorBoardObserver`).
        objects: more to save and restore with each checkpoint beside the
            model (which brings every optimizer it holds), name -> trackable:
            a `tf.Variable`, another Keras model (an EMA copy), a `tf.Module`.
        mirror: a remote run directory (`"s3://bucket/exp1"`, `"gs://..."`,
            any fsspec URL). Each checkpoint is committed locally, then
            uploaded in the background (`fit` never waits for the network);
            the end of `fit` and a preemption save wait for theirs. On a new
            machine (an empty local directory) `fit` resumes from the newest
            intact checkpoint there. See "Checkpoints in the cloud".
        mirror_every: upload every Nth checkpoint (int) or at most one per
            interval (`datetime.timedelta`); the newest one is always
            uploaded when `fit` ends.
        mirror_keep_last: the remote tier's `keep_last` (default: as locally).
        mirror_keep_best: the remote tier's `keep_best` (default: as locally).
        storage_options: passed to fsspec's filesystem for `mirror`
            (credentials, `endpoint_url`, ...); never logged.
        preemption_signals: signals that announce a preemption (default
            `(signal.SIGTERM,)`; `None` or `()` leaves signals alone). When one
            arrives during `fit`, the callback saves a checkpoint at the next
            batch boundary (waiting for a pending async save to commit) and
            stops. The flag is checked after every batch, so the save happens
            within one step, not at the end of the epoch. The previous
            handlers are back in place when `fit` returns.
        preemption_exit_code: after that save, exit the process with this
            status (default 42, as TF's `PreemptionCheckpointHandler`, so a
            supervisor can restart on it); `None` returns from `fit` instead
            (`model.stop_training`), after Keras has run the rest of that
            epoch's end (validation, callbacks).
    """

    def __init__(
        self,
        directory: str | os.PathLike,
        *,
        monitor: str | None = "val_loss",
        mode: str = "auto",
        save_freq: str | int = "epoch",
        keep_last: int | None = 3,
        keep_best: int | None = None,
        keep_every_n_epochs: int | None = None,
        keep_every_n_hours: float | None = None,
        restore: str | int | bool = "latest",
        retention: Any = None,
        on_save_error: str = "raise",
        restore_random_state: bool = True,
        async_save: bool = False,
        fsync: bool = True,
        incremental: bool = True,
        verbose: int = 1,
        preemption_signals: Any = (signal.SIGTERM,),
        preemption_exit_code: int | None = PREEMPTION_EXIT_CODE,
        init_from: Any = None,
        init_optimizer: bool = True,
        observers: Any = None,
        objects: Any = None,
        mirror: str | None = None,
        mirror_every: Any = 1,
        mirror_keep_last: Any = LOCAL_RULE,
        mirror_keep_best: Any = LOCAL_RULE,
        storage_options: Any = None,
    ):
        super().__init__()
        check_backend()
        # What to keep and where.
        keep = KeepRules(keep_last, keep_best, keep_every_n_epochs, keep_every_n_hours, retention)
        self.directory = run_options(directory, monitor, keep)
        # The remote tier.
        self.mirror = mirror_options(
            mirror, mirror_every, mirror_keep_last, mirror_keep_best, storage_options, keep
        )
        self.monitor = monitor
        self.mode = check_mode(mode, AUTO_MODES)
        self.keep_last = keep_last
        self.keep_best = keep_best
        self.keep_every_n_epochs = keep_every_n_epochs
        self.keep_every_n_hours = keep_every_n_hours
        self.retention = retention
        # When and how to save.
        self.save_freq = check_save_freq(save_freq)
        self.on_save_error = check_choice("on_save_error", on_save_error, ("raise", "warn"))
        self.async_save = bool(async_save)
        self.fsync = bool(fsync)
        self.incremental = check_flag("incremental", incremental)
        self.observers = validate_observers(observers)
        self.objects = validate_objects(objects)
        # What to restore.
        self.restore = check_restore(restore)
        self.restore_random_state = bool(restore_random_state)
        if init_from is not None:
            parse_source(init_from)  # a malformed selection fails here, not mid-fit
        self.init_from = init_from
        self.init_optimizer = bool(init_optimizer)
        # Preemption and output.
        self.preemption_signals = validate_signals("preemption_signals", preemption_signals)
        self.preemption_exit_code = validate_exit_code("preemption_exit_code", preemption_exit_code)
        self.verbose = check_choice("verbose", verbose, (0, 1))
        self._warned: set[str] = set()
        self._fit: FitSession | None = None  # the fit in progress, or the last one

    @property
    def manager(self) -> CheckpointManager | None:
        """The `CheckpointManager` of the fit in progress (`None` outside `fit`)."""
        return self._fit.manager if self._fit is not None else None

    @property
    def restored(self) -> CheckpointRecord | None:
        """The checkpoint the last `fit` started from, if it restored one."""
        return self._fit.restored if self._fit is not None else None

    def _say(self, message: str) -> None:
        if self.verbose:
            print(f"tfckpt: {message}", flush=True)

    def _warn_once(self, key: str, message: str) -> None:
        if key not in self._warned:
            self._warned.add(key)
            warnings.warn(f"tfckpt: {message}", stacklevel=4)

    # ---- Keras hooks: each goes to the fit in progress -----------------

    def on_train_begin(self, logs: dict | None = None) -> None:
        check_backend()
        if self._fit is not None:
            # A previous fit that left without on_train_end in a way no wrapper
            # saw (an exception in a window between fit's calls) left its
            # wrappers and its manager (lock, signal handlers): undo them first.
            if self._fit.manager is not None:
                self._fit.raised(RuntimeError("an earlier fit did not end"))
            self._fit.put_back()
        self._fit = fit = FitSession(self, self._warn_once, self._say)
        try:
            fit.begin()
        except BaseException as e:
            fit.exit_watch.fired = True
            fit.raised(e)
            raise

    def on_epoch_begin(self, epoch: int, logs: dict | None = None) -> None:
        if self._fit is not None:
            self._fit.epoch_begin(epoch)

    def on_train_batch_end(self, batch: int, logs: dict | None = None) -> None:
        if self._fit is not None:
            self._fit.batch_end(batch, logs)

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        if self._fit is not None:
            self._fit.epoch_end(epoch, logs)

    def on_train_end(self, logs: dict | None = None) -> None:
        if self._fit is not None:
            self._fit.end(logs)
