"""`CheckpointCallback`: the Keras glue over `CheckpointManager`."""

from __future__ import annotations

import copy
import math
import os
import signal
import warnings
import weakref
from typing import Any

import keras
import numpy as np

from tfckpt import _resume, _tf_checkpoint, _training_state
from tfckpt._data_position import TrainingData, find_fit_frame
from tfckpt._fit_hooks import ExitWatch, replace
from tfckpt._preemption import PREEMPTION_EXIT_CODE, validate_exit_code, validate_signals
from tfckpt._progress import FitProgress
from tfckpt.errors import CheckpointWriteError, CommittedWithError
from tfckpt.manager import CheckpointManager
from tfckpt.monitor import AUTO_MODES, check_mode, in_logs, resolve_mode
from tfckpt.observers import CheckpointObserver
from tfckpt.options import (
    KeepRules,
    check_backend,
    check_choice,
    check_flag,
    check_restore,
    check_save_freq,
    parse_source,
    run_options,
    validate_observers,
)
from tfckpt.store import CheckpointRecord, jsonable


class _Report(CheckpointObserver):
    """The callback's verbose line per save."""

    def __init__(self, callback: CheckpointCallback):
        self._callback = weakref.ref(callback)

    def on_commit(self, record: CheckpointRecord) -> None:
        callback = self._callback()
        if callback is not None:
            callback._report(record)


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
            raised at the next save or at the end of `fit`, never lost.
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
    ):
        super().__init__()
        check_backend()
        # What to keep and where.
        keep = KeepRules(keep_last, keep_best, keep_every_n_epochs, keep_every_n_hours, retention)
        self.directory = run_options(directory, monitor, keep)
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
        # Per fit.
        self.manager: CheckpointManager | None = None
        self.restored: CheckpointRecord | None = None
        self._progress = FitProgress()
        self._continuing = False  # trains on from the model in memory
        self._others: list[Any] = []  # the other callbacks of this fit
        self._resume_states: dict | None = None  # their saved states, set at epoch 1
        self._host_rng_at_epoch_begin: dict | None = None
        self._preempted = False
        self._preempted_in_epoch = False
        self._warned: set[str] = set()
        self._undo: list[Any] = []  # restores what this fit wrapped on the model
        self._exit_watch: ExitWatch | None = None
        self._data: TrainingData | None = None  # fit's training data, watched
        self._amend: tuple[dict, Any] | None = None  # epoch-end save to recheck

    # ---- helpers -------------------------------------------------------

    def _say(self, message: str) -> None:
        if self.verbose:
            print(f"tfckpt: {message}", flush=True)

    def _warn_once(self, key: str, message: str) -> None:
        if key not in self._warned:
            self._warned.add(key)
            warnings.warn(f"tfckpt: {message}", stacklevel=3)

    def _state(self, batch: int) -> dict[str, Any]:
        state: dict[str, Any] = {
            "batches": self._progress.batches_total,
            "history": self._progress.history,
            "callbacks": _training_state.callback_states(self._others),
        }
        if self._data is not None:
            state["data"] = self._data.state()
        if self.restore_random_state:
            # Mid-epoch, the host generators are saved as they were when the
            # epoch began: a resume draws the skipped batches through the data
            # pipeline again (e.g. PyDataset's shuffle, NumPy augmentation),
            # which brings them to where they are now.
            host = self._host_rng_at_epoch_begin if batch else None
            state["rng"] = _training_state.random_state(self.model, host)
        if batch:  # mid-epoch: the epoch's metric accumulators, to continue them
            state["metrics_variables"] = _training_state.metric_values(self.model)
        return state

    def _watch_fit(self, fit_locals: dict[str, Any]) -> None:
        # Keras gives a callback no handle on the other callbacks or the data;
        # both are locals of the `fit` that calls on_train_begin.
        callback_list = fit_locals.get("callbacks")
        others = getattr(callback_list, "callbacks", None) or []
        self._others = [cb for cb in others if cb is not self]
        if callback_list is not None:
            epoch_end = callback_list.on_epoch_end

            def on_epoch_end(epoch: int, logs: dict | None = None) -> None:
                epoch_end(epoch, logs)
                self._flush()  # every callback has seen this epoch end now

            replace(callback_list, "on_epoch_end", on_epoch_end, self._undo)
        after = others[others.index(self) + 1 :] if self in others else []
        self._exit_watch.watch_fit(self.model, callback_list, after)
        self._data = None
        epoch_iterator = fit_locals.get("epoch_iterator")
        if epoch_iterator is not None and hasattr(epoch_iterator, "_get_iterator"):
            self._data = TrainingData(epoch_iterator)
            self._undo.append(self._data.undo)
            dataset = self._data.py_dataset()
            if isinstance(
                dataset, _training_state.StatefulCallback
            ):  # a PyDataset with its own order
                self._others.append(dataset)

    def _save(self, logs: dict | None, batch: int, *, supersede: bool = False) -> bool:
        """Saves this point; `supersede`: the newest checkpoint is this same
        point without what later callbacks changed, and this one replaces it."""
        logs = dict(logs or {})
        loss = logs.get("loss")
        if loss is not None and not math.isfinite(float(loss)):
            self._warn_once(
                "nonfinite",
                f"loss is {loss}; not saving a checkpoint of a diverged model "
                "(the previous checkpoints are kept).",
            )
            return False
        logs = jsonable(logs)
        step = self._optimizer_step() or 0
        self._wait_for_save()  # the previous save's error is its own
        try:
            self.manager.save(
                step,
                epoch=self._progress.epochs_done,
                batch=batch,
                metrics=logs,
                state=self._state(batch),
                supersede=supersede,
            )
        except CommittedWithError as e:
            self._progress.saved(step)  # committed all the same
            self._save_failed(e)
            return True
        except CheckpointWriteError as e:
            self._save_failed(e)
            return False
        self._progress.saved(step)
        return True

    def _optimizer_step(self) -> int | None:
        optimizer = self.manager.optimizer
        return _tf_checkpoint.optimizer_step(optimizer) if optimizer is not None else None

    def _epoch_end_state(self) -> tuple[Any, list[Any]]:
        """What later callbacks may change at an epoch end and a resume needs:
        the state saved beside the checkpoint and the optimizer's scalars
        (learning rate, iterations)."""
        optimizer = self.manager.optimizer
        scalars = [
            np.asarray(v.numpy())
            for v in (getattr(optimizer, "variables", None) or [])
            if int(np.prod(v.shape)) == 1
        ]
        return self._state(0), scalars

    def _save_failed(self, error: CheckpointWriteError) -> None:
        if self.on_save_error == "raise":
            raise error
        warnings.warn(f"tfckpt: {error} Training goes on (on_save_error='warn').", stacklevel=3)
        self._progress.skip_failed_save()

    def _wait_for_save(self) -> None:
        """Surfaces the error of an async save still in flight."""
        try:
            self.manager.wait()
        except CheckpointWriteError as e:
            self._save_failed(e)

    def _report(self, record: CheckpointRecord) -> None:
        """Called with each committed checkpoint (from the save thread if async)."""
        if not self.verbose:
            return
        value = record.metrics.get(self.monitor) if self.monitor else None
        shown = f", {self.monitor}={value:.6g}" if isinstance(value, (int, float)) else ""
        best = self.manager.best_value if self.manager is not None else None
        mark = " (new best)" if best and best["step"] == record.step and shown else ""
        where = f"epoch {record.epoch}" + (f" batch {record.batch}" if record.batch else "")
        again = (
            "; replaces the epoch's first save: later callbacks changed the state"
            if record.manifest.get("supersedes")
            else ""
        )
        self._say(f"saved {record.name} ({where}, step {record.step}{shown}){mark}{again}")

    def _monitor_available(self, logs: dict) -> bool:
        found = in_logs(self.monitor, logs)
        if found is None:
            self._warn_once(
                "novalidation",
                f"monitor={self.monitor!r} is missing because no validation ran this "
                "epoch (validation_freq > 1 or no validation data); checkpoints of such "
                "epochs record no value for it.",
            )
        return bool(found)

    # ---- Keras hooks ---------------------------------------------------

    def _fit_raised(self, error: BaseException) -> None:
        """An exception is leaving `fit` (Keras will not call on_train_end):
        put back what this fit installed, before the user sees the error."""
        if self.manager is None:
            return  # on_train_end already ran (e.g. the preemption exit)
        _resume.mark_interrupted(self.manager.directory_key, self.model)
        if self._amend is not None and self._amend[1] is None:
            # An async epoch-end save not started yet (a later callback raised
            # at that epoch end): the epoch is complete, so it is saved.
            try:
                self._flush()
            except Exception as e:
                warnings.warn(f"tfckpt: could not save the last epoch: {e}", stacklevel=2)
        self._amend = None  # no other new save on the way out
        self.model._initial_epoch = None
        while self._undo:
            self._undo.pop()()
        manager = self.manager
        try:
            manager.wait()  # an async save in flight is committed (or its error said)
        except CheckpointWriteError as e:
            warnings.warn(f"tfckpt: {e}", stacklevel=2)
        finally:
            manager.close(finished=False)  # signal handlers back, lock released
            # Only now: a second Ctrl-C inside close() leaves the manager for
            # the next fit's on_train_begin to close.
            self.manager = None

    def on_train_begin(self, logs: dict | None = None) -> None:
        check_backend()
        # A previous fit that left without on_train_end in a way no wrapper saw
        # (an exception in a window between fit's calls) left its wrappers and
        # its manager (lock, signal handlers): undo them first.
        if self.manager is not None:
            self._fit_raised(RuntimeError("an earlier fit did not end"))
        while self._undo:
            self._undo.pop()()
        self._exit_watch = ExitWatch(self._fit_raised, self._undo)
        try:
            self._begin()
        except BaseException as e:
            self._exit_watch.fired = True
            self._fit_raised(e)
            raise

    def _begin(self) -> None:
        model = self.model
        self.manager = CheckpointManager(
            self.directory,
            model,
            getattr(model, "optimizer", None),
            monitor=self.monitor,
            mode=resolve_mode(self.monitor, self.mode, model),
            keep_last=self.keep_last,
            keep_best=self.keep_best,
            keep_every_n_epochs=self.keep_every_n_epochs,
            keep_every_n_hours=self.keep_every_n_hours,
            retention=self.retention,
            async_save=self.async_save,
            fsync=self.fsync,
            incremental=self.incremental,
            preemption_signals=self.preemption_signals,  # handlers back at close()
            observers=[_Report(self), *self.observers],
        )
        self.restored = None
        self._amend = None
        self._progress = FitProgress()
        fit_frame = find_fit_frame()
        self._exit_watch.fit_code = fit_frame.f_code if fit_frame is not None else None
        self._watch_fit(fit_frame.f_locals if fit_frame is not None else {})
        del fit_frame  # not kept: it holds fit's data
        self._preempted = False
        self._preempted_in_epoch = False
        self._resume_states = None
        self._wrap_finalize()
        start = _resume.decide(
            self.manager,
            model,
            restore=self.restore,
            init_from=self.init_from,
            init_optimizer=self.init_optimizer,
            warn_once=self._warn_once,
            say=self._say,
        )
        self.restored, self._continuing = start.restored, start.continuing
        base = start.base
        if base is None:
            return
        self._progress.carry_on(base, start.state)
        if self.restored is not None:
            self._resume(base, start.state)
        self._progress.saved(base.step)
        if self.restored is not None:
            model._initial_epoch = base.epoch or None
            epochs = (self.params or {}).get("epochs")
            where = "resuming the interrupted fit: " if start.resuming_here else ""
            if epochs is not None and base.epoch >= epochs:
                self._say(
                    f"{where}restored {base.name}: {base.epoch} of {epochs} epochs already done."
                )
            else:
                self._say(
                    f"{where}restored {base.name} (epoch {base.epoch}, step {base.step}); "
                    f"continuing at epoch {base.epoch + 1}."
                )

    def _resume(self, record: CheckpointRecord, state: dict[str, Any]) -> None:
        """What a restored run needs beyond the TF checkpoint."""
        if self.restore_random_state and "rng" in state:
            _training_state.set_random_state(self.model, state["rng"])
        self._resume_states = state.get("callbacks") or {}
        self._position_data(record, state.get("data"))
        batch = _resume.batch_to_resume_at(self.model, record, self._warn_once)
        if batch != record.batch:
            self._progress.start_epoch_partway(record.batch)
        if not batch:
            return
        self._progress.resume_batch = batch
        put_back = _resume.skip_batches(
            self.model, batch, dict(record.metrics), state.get("metrics_variables"), self._warn_once
        )
        self._undo.append(put_back)
        self._exit_watch.wrap(self.model, "train_function")

    def _position_data(self, record: CheckpointRecord, saved: dict | None) -> None:
        if self._data is None:
            problem = "tfckpt could not find fit's training data"
        else:
            moved = self._data.resume(saved, record.batch) if saved is not None else None
            problem = self._data.not_reproducible() or moved
            if self._data.replayed:
                self._say(
                    f"positioned the data: drew {self._data.replayed} batches that earlier "
                    "epochs took from fit's single iterator (steps_per_epoch), no compute."
                )
        if problem:
            self._warn_once(
                "data",
                f"resuming from {record.name}: {problem}. Weights, optimizer and "
                "counters are restored exactly, but the data order after the resume "
                "is not the one an uninterrupted run would have seen.",
            )

    def _flush(self) -> None:
        """Once every callback has seen an epoch end: saves the epoch again if
        callbacks after this one changed what a resume restores (or, with
        `async_save`, saves it for the first time)."""
        if self._amend is None or self.manager is None:
            return
        (logs, before), self._amend = self._amend, None
        if before is None:
            self._save(logs, batch=0)
        elif not _training_state.same_state(before, self._epoch_end_state()):
            self._save(logs, batch=0, supersede=True)

    def _wrap_finalize(self) -> None:
        # fit calls `optimizer.finalize_variable_values` after the last epoch,
        # before on_train_end; with use_ema=True it swaps the EMA averages into
        # the weights. A save still pending (fit stopped early by a callback
        # after us) must see the trained weights, so it is committed first.
        optimizer = self.manager.optimizer
        if optimizer is None or not hasattr(optimizer, "finalize_variable_values"):
            return
        original = type(optimizer).finalize_variable_values.__get__(optimizer)
        this = weakref.ref(self)

        def finalize_variable_values(var_list):
            callback = this()
            if callback is not None:
                callback._flush()
            return original(var_list)

        optimizer.finalize_variable_values = finalize_variable_values
        self._undo.append(lambda: vars(optimizer).pop("finalize_variable_values", None))
        self._exit_watch.wrap(optimizer, "finalize_variable_values")

    def on_epoch_begin(self, epoch: int, logs: dict | None = None) -> None:
        self._flush()
        # A signal during the last epoch's end (validation, callbacks): stop
        # here, once every callback has seen that epoch end.
        history = self._progress.history
        last_logs = {k: v for k, v in (history or [{}])[-1].items() if k != "epoch"}
        self._stop_if_preempted(last_logs, batch=0)
        # fit read `_initial_epoch` before the first epoch; clear it so a later
        # fit on this model does not silently skip epochs (BackupAndRestore's bug).
        self.model._initial_epoch = None
        if self._data is not None:
            self._data.epoch_begin()
        if self.restore_random_state:
            self._host_rng_at_epoch_begin = _training_state.host_random_state()
        if self._progress.epoch_begins(epoch, self._continuing) and self._resume_states:
            # After every callback's on_train_begin reset itself.
            _training_state.set_callback_states(self._others, self._resume_states)

    def on_train_batch_end(self, batch: int, logs: dict | None = None) -> None:
        self._flush()
        # `batch` is the last batch index of this step; the last step of an
        # epoch may hold fewer than steps_per_execution batches.
        steps = (self.params or {}).get("steps")
        done = min(batch + 1, steps) if steps else batch + 1
        if self._data is not None:
            self._data.batches_done(done)
        if not self._progress.batches_done(done):
            # A batch skipped on resume: the newest checkpoint holds this state.
            self._stop_if_preempted(logs, batch=None)
            return
        if self._progress.due(self.save_freq, done, steps):
            self._save(logs, batch=done)
        if self._preempted_in_epoch and self._progress.batches_unsaved():
            # Stopped at an epoch begin, Keras trains one more batch: save it
            # now, while the metric accumulators are this epoch's (validation
            # resets them before fit returns).
            self._save(logs, batch=done)
        self._stop_if_preempted(logs, batch=done)

    def _stop_if_preempted(self, logs: dict | None, batch: int | None) -> None:
        """After a preemption signal: save here (unless the newest checkpoint
        is this very state), wait for it to commit, then stop."""
        if batch is None and self.preemption_exit_code is None:
            # Batches skipped on resume train nothing; returning from fit
            # before any real step would leave Keras's metrics unbuilt.
            # Stop at the first real step instead.
            return
        if self._preempted or self.manager is None or not self.manager.preemption_requested():
            return
        self._preempted = True
        self.manager.acknowledge_preemption()
        if batch is not None and not self._progress.saved_here():
            self._save(logs, batch=batch)
        self._wait_for_save()
        where = f"step {self._progress.last_saved_step}"
        if self.preemption_exit_code is None:
            self._say(f"preemption signal received: checkpoint at {where}; stopping fit.")
            # Keras ends the epoch early (after one more batch when we stop
            # at an epoch begin): it is not a completed epoch, and on_train_end
            # saves where it stopped.
            self._preempted_in_epoch = True
            self.model.stop_training = True
            return
        self._say(
            f"preemption signal received: checkpoint at {where}; "
            f"exiting with status {self.preemption_exit_code}."
        )
        self.on_train_end()  # commits, restores what fit wrapped, releases the lock
        raise SystemExit(self.preemption_exit_code)

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        if self._preempted_in_epoch:
            return  # fit ends a preempted epoch early: it is not a completed one
        due = self._progress.epoch_ends(epoch, jsonable(dict(logs or {})))
        has_metric = self._monitor_available(logs or {})
        if not (self.save_freq == "epoch" or has_metric or due):
            return
        if self.async_save:
            # An async save is durable only once its background write ends, so
            # saving before later callbacks run gains nothing: save once, when
            # every callback has seen this epoch end (`_flush`), with their changes.
            self._amend = (logs, None)
            return
        # Durable before this returns: a kill in a later callback's on_epoch_end
        # (a slow logger, an upload) keeps this epoch.
        if self._save(logs, batch=0):
            # Later callbacks may still change the state at this epoch end
            # (ReduceLROnPlateau's learning rate): rechecked by `_flush`.
            self._amend = (logs, copy.deepcopy(self._epoch_end_state()))

    def on_train_end(self, logs: dict | None = None) -> None:
        if self.manager is None:
            return
        finished = False  # training ended normally (for watchers of the directory)
        try:
            self._flush()
            if self._progress.unsaved(self._optimizer_step()):
                # Work done since the last save (save_freq=int): keep it.
                self._save(logs, batch=self._progress.batch_in_epoch)
            finished = not self._preempted
        finally:
            self.model._initial_epoch = None
            if self._preempted:  # a preemption that returned from fit: resumed next time
                _resume.mark_interrupted(self.manager.directory_key, self.model)
            while self._undo:
                self._undo.pop()()
            manager, self.manager = self.manager, None
            try:
                manager.wait()  # the last async save: committed before fit returns
            except CheckpointWriteError as e:
                finished = False
                self._save_failed(e)
            finally:
                manager.close(finished=finished)
