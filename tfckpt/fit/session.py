"""One `fit` of a `CheckpointCallback`: its manager, its progress, the saves
it makes, the resume it starts with and the preemption it may stop for.

The callback holds the user's arguments and hands each of Keras's hooks to
the `FitSession` of the fit in progress; a new fit gets a new session.
"""

from __future__ import annotations

import copy
import math
import warnings
import weakref
from collections.abc import Callable
from typing import Any

from tfckpt.browse.display import save_line
from tfckpt.errors import CheckpointWriteError, CommittedWithError, DamagedCheckpointError
from tfckpt.fit import resume, training_state
from tfckpt.fit.data_position import TrainingData, find_fit_frame
from tfckpt.fit.exit_watch import ExitWatch, replace
from tfckpt.fit.progress import FitProgress
from tfckpt.manager import CheckpointManager
from tfckpt.monitor import in_logs, resolve_mode
from tfckpt.observers import CheckpointObserver
from tfckpt.options import check_steps_per_execution
from tfckpt.saving import random_state
from tfckpt.store import tf_checkpoint
from tfckpt.store.layout import CheckpointRecord, jsonable


class _Report(CheckpointObserver):
    """The callback's verbose line per save."""

    def __init__(self, session: FitSession):
        self._session = weakref.ref(session)

    def on_commit(self, record: CheckpointRecord) -> None:
        session = self._session()
        if session is not None:
            session.report(record)


class FitSession:
    """The state of one `fit` with a `CheckpointCallback`.

    Args:
        callback: the callback (its arguments, `model` and `params`).
        warn_once: warns once per callback for a key.
        say: prints a line when the callback is verbose.
    """

    def __init__(
        self,
        callback: Any,
        warn_once: Callable[[str, str], None],
        say: Callable[[str], None],
    ):
        self.callback = callback
        self.model = callback.model
        self._warn_once = warn_once
        self._say = say
        self.manager: CheckpointManager | None = None
        self.restored: CheckpointRecord | None = None
        self.progress = FitProgress()
        self.continuing = False  # trains on from the model in memory
        self.relative = False  # its epochs are numbered on from the run's (see begin)
        self.fits: list[dict[str, Any]] = []  # the run's fits before this one
        self.others: list[Any] = []  # the other callbacks of this fit
        self.resume_states: dict | None = None  # their saved states, set at epoch 1
        self.host_rng: dict | None = None  # host generators at the epoch's begin
        self.preempted = False
        self.preempted_in_epoch = False
        self.undo: list[Any] = []  # restores what this fit wrapped on the model
        self.exit_watch = ExitWatch(self.raised, self.undo)
        self.data: TrainingData | None = None  # fit's training data, watched
        self.amend: tuple[dict, Any] | None = None  # epoch-end save to recheck

    def put_back(self) -> None:
        """Undoes what this fit wrapped (the train function, hooks)."""
        while self.undo:
            self.undo.pop()()

    def _state(self, batch: int) -> dict[str, Any]:
        state: dict[str, Any] = {
            "batches": self.progress.batches_total,
            "history": self.progress.history,
            "callbacks": training_state.callback_states(self.others),
            "fits": [
                *self.fits,
                {
                    "phase": tf_checkpoint.phase(self.model, self.manager.optimizer),
                    "first_epoch": self.progress.epoch_offset or 0,
                    "epochs": int((self.callback.params or {}).get("epochs") or 0),
                },
            ],
        }
        if self.data is not None:
            state["data"] = self.data.state()
        if self.callback.restore_random_state:
            # Mid-epoch, the host generators are saved as they were when the
            # epoch began: a resume draws the skipped batches through the data
            # pipeline again (e.g. PyDataset's shuffle, NumPy augmentation),
            # which brings them to where they are now.
            host = self.host_rng if batch else None
            state["rng"] = random_state.random_state(self.model, host)
        if batch:  # mid-epoch: the epoch's metric accumulators, to continue them
            state["metrics_variables"] = training_state.metric_values(self.model)
        return state

    def _watch_fit(self, fit_locals: dict[str, Any]) -> None:
        # Keras gives a callback no handle on the other callbacks or the data;
        # both are locals of the `fit` that calls on_train_begin.
        callback_list = fit_locals.get("callbacks")
        others = getattr(callback_list, "callbacks", None) or []
        self.others = [cb for cb in others if cb is not self.callback]
        if callback_list is not None:
            epoch_end = callback_list.on_epoch_end

            def on_epoch_end(epoch: int, logs: dict | None = None) -> None:
                epoch_end(epoch, logs)
                self.flush()  # every callback has seen this epoch end now

            replace(callback_list, "on_epoch_end", on_epoch_end, self.undo)
        after = others[others.index(self.callback) + 1 :] if self.callback in others else []
        self.exit_watch.watch_fit(self.model, callback_list, after)
        self.data = None
        epoch_iterator = fit_locals.get("epoch_iterator")
        if epoch_iterator is not None and hasattr(epoch_iterator, "_get_iterator"):
            self.data = TrainingData(epoch_iterator)
            self.undo.append(self.data.undo)
            dataset = self.data.py_dataset()
            if isinstance(
                dataset, training_state.StatefulCallback
            ):  # a PyDataset with its own order
                self.others.append(dataset)

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
        step = self._step() or 0
        self._wait_for_save()  # the previous save's error is its own
        try:
            self.manager.save(
                step,
                epoch=self.progress.epochs_done,
                batch=batch,
                metrics=logs,
                state=self._state(batch),
                supersede=supersede,
            )
        except CommittedWithError as e:
            self.progress.saved(step)  # committed all the same
            self._save_failed(e)
            return True
        except CheckpointWriteError as e:
            self._save_failed(e)
            return False
        self.progress.saved(step)
        return True

    def _step(self) -> int | None:
        """The step recorded with a checkpoint: the training steps of the run,
        counted across restarts and phases (an optimizer's iterations restart
        with a new optimizer, and a GAN's unused compiled one has none)."""
        return self.progress.batches_total

    def _epoch_end_state(self) -> tuple[Any, list[Any]]:
        """What later callbacks may change at an epoch end and a resume needs:
        the state saved beside the checkpoint and the optimizer's scalars
        (learning rate, iterations)."""
        return self._state(0), training_state.optimizer_scalars(self.manager.optimizer)

    def _save_failed(self, error: CheckpointWriteError) -> None:
        if self.callback.on_save_error == "raise":
            raise error
        warnings.warn(f"tfckpt: {error} Training goes on (on_save_error='warn').", stacklevel=3)
        self.progress.skip_failed_save()

    def _wait_for_save(self) -> None:
        """Surfaces the error of an async save still in flight."""
        try:
            self.manager.wait()
        except CheckpointWriteError as e:
            self._save_failed(e)

    def report(self, record: CheckpointRecord) -> None:
        """Called with each committed checkpoint (from the save thread if async)."""
        if self.callback.verbose:
            best = self.manager.best_value if self.manager is not None else None
            self._say(save_line(record, self.callback.monitor, best))

    def _monitor_available(self, logs: dict) -> bool:
        found = in_logs(self.callback.monitor, logs)
        if found is None:
            self._warn_once(
                "novalidation",
                f"monitor={self.callback.monitor!r} is missing because no validation ran this "
                "epoch (validation_freq > 1 or no validation data); checkpoints of such "
                "epochs record no value for it.",
            )
        return bool(found)

    def raised(self, error: BaseException) -> None:
        """An exception is leaving `fit` (Keras will not call on_train_end):
        put back what this fit installed, before the user sees the error."""
        if self.manager is None:
            return  # on_train_end already ran (e.g. the preemption exit)
        resume.mark_interrupted(self.manager.directory_key, self.model)
        if self.amend is not None and self.amend[1] is None:
            # An async epoch-end save not started yet (a later callback raised
            # at that epoch end): the epoch is complete, so it is saved.
            try:
                self.flush()
            except Exception as e:
                warnings.warn(f"tfckpt: could not save the last epoch: {e}", stacklevel=2)
        self.amend = None  # no other new save on the way out
        self.model._initial_epoch = None
        while self.undo:
            self.undo.pop()()
        self._let_go_of_fit()  # no save reads them any more
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

    def begin(self) -> None:
        model = self.model
        check_steps_per_execution(model, self.callback.save_freq)
        self.manager = CheckpointManager(
            self.callback.directory,
            model,
            getattr(model, "optimizer", None),
            monitor=self.callback.monitor,
            mode=resolve_mode(self.callback.monitor, self.callback.mode, model),
            keep_last=self.callback.keep_last,
            keep_best=self.callback.keep_best,
            keep_every_n_epochs=self.callback.keep_every_n_epochs,
            keep_every_n_hours=self.callback.keep_every_n_hours,
            retention=self.callback.retention,
            async_save=self.callback.async_save,
            fsync=self.callback.fsync,
            incremental=self.callback.incremental,
            preemption_signals=self.callback.preemption_signals,  # handlers back at close()
            observers=[_Report(self), *self.callback.observers],
            objects=self.callback.objects,
            restore_random_state=self.callback.restore_random_state,
            **_mirror_arguments(self.callback.mirror),
        )
        if self.manager.mirror is not None:
            self.manager.mirror.report = self._say
        fit_frame = find_fit_frame()
        self.exit_watch.fit_code = fit_frame.f_code if fit_frame is not None else None
        self._watch_fit(fit_frame.f_locals if fit_frame is not None else {})
        del fit_frame  # not kept: it holds fit's data
        self._wrap_finalize()
        start = resume.decide(
            self.manager,
            model,
            restore=self.callback.restore,
            init_from=self.callback.init_from,
            init_optimizer=self.callback.init_optimizer,
            warn_once=self._warn_once,
            say=self._say,
            epochs=(self.callback.params or {}).get("epochs"),
        )
        self.restored, self.continuing = start.restored, start.continuing
        # This fit's entry in the run's record of its fits (see fit/resume.py).
        self.fits = list(start.fits or [])
        self.relative = start.continuing or start.first_epoch is not None
        epochs = (self.callback.params or {}).get("epochs")
        if start.skip:
            model._initial_epoch = epochs  # Keras trains range(initial, epochs): nothing
            return
        base = start.base
        if base is None:
            return
        self.progress.carry_on(base, start.state)
        if self.restored is not None:
            try:
                self._resume(base, start.state)
            except (TypeError, ValueError, KeyError, IndexError, AttributeError) as e:
                # The state files are checksummed: only someone else's run
                # directory (a hostile or hand-edited copy) gets here.
                raise DamagedCheckpointError(
                    f"The training state saved with checkpoint {base.name} in "
                    f"{self.manager.directory!r} is not what tfckpt wrote ({e!r}): it cannot "
                    "be resumed from. Pass restore= another checkpoint (a step), or restore=False "
                    "to start afresh."
                ) from None
        self.progress.saved(base.step)
        if self.restored is not None:
            first = start.first_epoch or 0
            model._initial_epoch = (base.epoch - first) or None
            last = epochs + first if epochs is not None else None
            self._say(resume.restored_line(base, last, start.resuming_here))

    def _resume(self, record: CheckpointRecord, state: dict[str, Any]) -> None:
        """What a restored run needs beyond the TF checkpoint."""
        if self.callback.restore_random_state and "rng" in state:
            random_state.set_random_state(self.model, state["rng"])
        self.resume_states = state.get("callbacks") or {}
        resume.position_data(self.data, record, state.get("data"), self._say, self._warn_once)
        batch = resume.batch_to_resume_at(self.model, record, self._warn_once)
        if batch != record.batch:
            self.progress.start_epoch_partway(record.batch)
        if not batch:
            return
        self.progress.resume_batch = batch
        put_back = resume.skip_batches(
            self.model, batch, dict(record.metrics), state.get("metrics_variables"), self._warn_once
        )
        self.undo.append(put_back)
        self.exit_watch.wrap(self.model, "train_function")

    def flush(self) -> None:
        """Once every callback has seen an epoch end: saves the epoch again if
        callbacks after this one changed what a resume restores (or, with
        `async_save`, saves it for the first time)."""
        if self.amend is None or self.manager is None:
            return
        (logs, before), self.amend = self.amend, None
        if before is None:
            self._save(logs, batch=0)
        elif not training_state.same_state(before, self._epoch_end_state()):
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
            session = this()
            if session is not None:
                session.flush()
            return original(var_list)

        optimizer.finalize_variable_values = finalize_variable_values
        self.undo.append(lambda: vars(optimizer).pop("finalize_variable_values", None))
        self.exit_watch.wrap(optimizer, "finalize_variable_values")

    def epoch_begin(self, epoch: int) -> None:
        self.flush()
        # A signal during the last epoch's end (validation, callbacks): stop
        # here, once every callback has seen that epoch end.
        history = self.progress.history
        last_logs = {k: v for k, v in (history or [{}])[-1].items() if k != "epoch"}
        self._stop_if_preempted(last_logs, batch=0)
        # fit read `_initial_epoch` before the first epoch; clear it so a later
        # fit on this model does not silently skip epochs (BackupAndRestore's bug).
        self.model._initial_epoch = None
        if self.data is not None:
            self.data.epoch_begin()
        if self.callback.restore_random_state:
            self.host_rng = random_state.host_random_state()
        if self.progress.epoch_begins(epoch, self.relative) and self.resume_states:
            # After every callback's on_train_begin reset itself.
            training_state.set_callback_states(self.others, self.resume_states)

    def batch_end(self, batch: int, logs: dict | None = None) -> None:
        self.flush()
        # `batch` is the last batch index of this step; the last step of an
        # epoch may hold fewer than steps_per_execution batches.
        steps = (self.callback.params or {}).get("steps")
        done = min(batch + 1, steps) if steps else batch + 1
        if self.data is not None:
            self.data.batches_done(done)
        if not self.progress.batches_done(done):
            # A batch skipped on resume: the newest checkpoint holds this state.
            self._stop_if_preempted(logs, batch=None)
            return
        if self.progress.due(self.callback.save_freq, done, steps):
            self._save(logs, batch=done)
        if self.preempted_in_epoch and self.progress.batches_unsaved():
            # Stopped at an epoch begin, Keras trains one more batch: save it
            # now, while the metric accumulators are this epoch's (validation
            # resets them before fit returns).
            self._save(logs, batch=done)
        self._stop_if_preempted(logs, batch=done)

    def _stop_if_preempted(self, logs: dict | None, batch: int | None) -> None:
        """After a preemption signal: save here (unless the newest checkpoint
        is this very state), wait for it to commit, then stop."""
        if batch is None and self.callback.preemption_exit_code is None:
            # Batches skipped on resume train nothing; returning from fit
            # before any real step would leave Keras's metrics unbuilt.
            # Stop at the first real step instead.
            return
        if self.preempted or self.manager is None or not self.manager.preemption_requested():
            return
        self.preempted = True
        self.manager.acknowledge_preemption()
        if batch is not None and not self.progress.saved_here():
            self._save(logs, batch=batch)
        self._wait_for_save()
        where = f"step {self.progress.last_saved_step}"
        if self.callback.preemption_exit_code is None:
            self._say(f"preemption signal received: checkpoint at {where}; stopping fit.")
            # Keras ends the epoch early (after one more batch when we stop
            # at an epoch begin): it is not a completed epoch, and on_train_end
            # saves where it stopped.
            self.preempted_in_epoch = True
            self.model.stop_training = True
            return
        self._say(
            f"preemption signal received: checkpoint at {where}; "
            f"exiting with status {self.callback.preemption_exit_code}."
        )
        self.end()  # commits, restores what fit wrapped, releases the lock
        raise SystemExit(self.callback.preemption_exit_code)

    def epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        if self.preempted_in_epoch:
            return  # fit ends a preempted epoch early: it is not a completed one
        due = self.progress.epoch_ends(epoch, jsonable(dict(logs or {})))
        has_metric = self._monitor_available(logs or {})
        if not (self.callback.save_freq == "epoch" or has_metric or due):
            return
        if self.callback.async_save:
            # An async save is durable only once its background write ends, so
            # saving before later callbacks run gains nothing: save once, when
            # every callback has seen this epoch end (`_flush`), with their changes.
            self.amend = (logs, None)
            return
        # Durable before this returns: a kill in a later callback's on_epoch_end
        # (a slow logger, an upload) keeps this epoch.
        if self._save(logs, batch=0):
            # Later callbacks may still change the state at this epoch end
            # (ReduceLROnPlateau's learning rate): rechecked by `_flush`.
            self.amend = (logs, copy.deepcopy(self._epoch_end_state()))

    def end(self, logs: dict | None = None) -> None:
        if self.manager is None:
            return
        finished = False  # training ended normally (for watchers of the directory)
        try:
            self.flush()
            if self.progress.unsaved(self._step()):
                # Work done since the last save (save_freq=int): keep it.
                self._save(logs, batch=self.progress.batch_in_epoch)
            finished = not self.preempted
        finally:
            self._let_go_of_fit()  # first: close() below may raise (a late signal)
            self.model._initial_epoch = None
            if self.preempted:  # a preemption that returned from fit: resumed next time
                resume.mark_interrupted(self.manager.directory_key, self.model)
            while self.undo:
                self.undo.pop()()
            manager, self.manager = self.manager, None
            try:
                manager.wait()  # the last async save: committed before fit returns
            except CheckpointWriteError as e:
                finished = False
                self._save_failed(e)
            finally:
                manager.close(finished=finished)

    def _let_go_of_fit(self) -> None:
        """Drops what this fit lent the session: its data (the epoch iterator
        and, through it, the tf.data iterator, its buffers and threads) and
        its other callbacks. The callback and its session form a cycle, so
        whatever they hold is otherwise freed by a later garbage collection,
        at a random point in whatever thread runs it; freeing a tf.data
        iterator there blocks that thread until the pipeline's autotuning
        thread wakes (tens of seconds measured)."""
        self.data = None
        self.others = []


def _mirror_arguments(options: Any) -> dict[str, Any]:
    """The callback's checked `MirrorOptions` as the manager's arguments."""
    if options is None:
        return {}
    return {
        "mirror": options.url,
        "mirror_every": options.every,
        "mirror_keep_last": options.keep_last,
        "mirror_keep_best": options.keep_best,
        "storage_options": options.storage_options,
    }
