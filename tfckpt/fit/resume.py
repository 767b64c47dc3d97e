"""What a `fit` starts from: restore a checkpoint, train on from memory, or
fork another run; and, after a restore, the position within the epoch.

The rule: an interrupted `fit` is resumed from the newest checkpoint, a
completed one is trained on. This process remembers, per directory, which
models it trained and which fits were interrupted.

Epochs count per `fit`, as in Keras: `fit(epochs=N)` trains N epochs,
numbered on from where the run is (in the same process, or forked with
`init_from`). Each checkpoint records the fits of its run so far (`fits` in
its state: each one's training phase, first epoch and epochs), so a script
of several fits (phase 1 with a frozen base, phase 2 unfrozen with a new
optimizer) rerun after a crash replays them: a fit that had completed trains
nothing, the interrupted one continues from the newest checkpoint to its own
last epoch, and the fits after it run as they did.

A restore takes the optimizer's state only from a checkpoint of the same
training phase (`tf_checkpoint.phase`: the optimizers' classes and the
trainable variables); from another phase it takes the model's weights and
the epoch count, and the optimizer starts afresh, as when that phase began.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from tfckpt.fit import training_state
from tfckpt.store import tf_checkpoint
from tfckpt.store.layout import CheckpointRecord

# Models this process has trained with a checkpoint directory (by directory):
# a later fit of such a model trains on instead of restoring over it, even
# after a recompile reset its optimizer.
_trained_here: dict[str, weakref.WeakSet] = {}
# The parent a model was forked from into a directory that has no checkpoint
# yet, for a later fit in this process to keep recording it.
_forked: dict[str, weakref.WeakKeyDictionary] = {}
# Fits each model has begun in this process with a directory: the next one's
# place in the run's recorded `fits`, for a rerun of a script of several fits
# (a new model, as in a new process, begins at the first).
_fits_begun: dict[str, weakref.WeakKeyDictionary] = {}
# Models whose last fit with a directory was interrupted (an exception left
# fit, or a preemption returned from it): their next fit resumes from the
# directory's newest checkpoint, as a new process would.
_interrupted: dict[str, weakref.WeakSet] = {}


def mark_interrupted(directory_key: str, model: Any) -> None:
    """The fit of `model` with that directory did not complete."""
    _interrupted.setdefault(directory_key, weakref.WeakSet()).add(model)


@dataclass
class Start:
    """Where a fit starts."""

    base: CheckpointRecord | None = None  # whose counters this fit carries on
    state: dict[str, Any] | None = None  # the state saved with `base`
    restored: CheckpointRecord | None = None  # restored into the model, if any
    continuing: bool = False  # trains on from the model in memory
    resuming_here: bool = False  # resumes a fit this process interrupted
    fits: list[dict[str, Any]] | None = None  # the run's fits before this one
    first_epoch: int | None = None  # the run's epoch this fit began at, when known
    skip: bool = False  # a fit of a rerun script that had completed: train nothing


def decide(
    manager: Any,
    model: Any,
    *,
    restore: str | int | bool,
    init_from: Any,
    init_optimizer: bool,
    warn_once: Callable[[str, str], None],
    say: Callable[[str], None],
    epochs: int | None = None,
) -> Start:
    """Restores, forks or does nothing, as the rule says, and returns where
    the fit starts."""
    key = manager.directory_key
    trained_here = _trained_here.setdefault(key, weakref.WeakSet())
    interrupted = _interrupted.get(key, set())
    was_interrupted = model in interrupted
    start = Start(resuming_here=was_interrupted and restore is not False)
    interrupted.discard(model)
    begun = _fits_begun.setdefault(key, weakref.WeakKeyDictionary())
    index = begun.get(model, 1) - 1 if start.resuming_here else begun.get(model, 0)
    begun[model] = index + 1
    start.fits = []
    latest = manager.latest
    if latest is not None:
        fits = recorded_fits(manager, latest)
        optimizer = manager.optimizer
        step_now = tf_checkpoint.optimizer_step(optimizer) if optimizer is not None else 0
        if start.resuming_here:
            # An interrupted fit of this model: its state in memory may be
            # past the newest checkpoint by a partial step or epoch, so it
            # resumes from the checkpoint, exactly as a new process does.
            start.base = start.restored = manager.restore(restore, optimizer="auto")
            start.fits = fits[:index]
            start.first_epoch = _first_epoch(fits, index, start.base)
            if index == len(fits) and start.base is not None:
                start.first_epoch = start.base.epoch  # it had saved nothing yet
        elif model in trained_here or (step_now > 0 and step_now >= latest.step):
            start.base = latest  # this process trained it: train on, restore nothing
            start.continuing = True
            start.fits = fits
        elif restore is False:
            warn_once(
                "norestore",
                f"restore=False: {manager.directory!r} already holds checkpoints; "
                "new ones are added beside them and retention applies to all.",
            )
        elif _completed_before(fits, index, manager.training_phase(latest), epochs):
            start.skip = True
            entry = fits[index]
            say(
                f"this fit (fit {index + 1} of the script) had completed epochs "
                f"{entry['first_epoch'] + 1}-{entry['first_epoch'] + entry['epochs']} of "
                f"the run before it was interrupted in a later fit: training nothing here."
            )
        else:
            start.base = start.restored = manager.restore(restore, optimizer="auto")
            if _matches(fits, index, manager.training_phase()):  # the fit that was interrupted
                start.fits = fits[:index]
                start.first_epoch = _first_epoch(fits, index, start.base)
            else:  # a fit the run has not seen (or recorded by an older tfckpt)
                start.fits = fits
                if fits and index == len(fits) and start.base is not None:
                    start.first_epoch = start.base.epoch  # the next fit of the script
    if latest is None and was_interrupted and init_from is None:
        warn_once(
            "nothing-to-resume",
            f"the interrupted fit committed no checkpoint in {manager.directory!r}, so "
            "this fit starts from the weights the interruption left in memory (a new "
            "process would start from freshly initialized ones): rebuild the model "
            "to start over.",
        )
    if latest is None and init_from is not None and (model not in trained_here or was_interrupted):
        # A new run forked from another run's checkpoint.
        start.base, start.state = manager.init_from(init_from, optimizer=init_optimizer)
        _forked.setdefault(key, weakref.WeakKeyDictionary())[model] = manager.parent
        start.restored = start.base
        start.first_epoch = start.base.epoch  # its epochs are numbered on
        say(
            f"initialized from {manager.parent['directory']} {start.base.name} "
            f"(epoch {start.base.epoch}, step {start.base.step})"
            + ("" if init_optimizer else ", without its optimizer state")
            + "."
        )
    if start.restored is not None and manager.phase_change is not None:
        say(
            f"{start.restored.name} was saved in another training phase "
            f"({manager.phase_change}): restored the model's weights and the epoch "
            "count; the optimizer starts afresh, as when that phase began."
        )
    if manager.parent is None:
        manager.parent = _forked.get(key, {}).get(model)
    if not start.skip:
        # A skipped fit trained nothing: the next fit of the script restores
        # its own optimizer state, as in a new process.
        trained_here.add(model)
    if start.base is not None and start.state is None:
        start.state = manager.state(start.base)
    return start


def batch_to_resume_at(
    model: Any, record: CheckpointRecord, warn_once: Callable[[str, str], None]
) -> int:
    """The batch of `record`'s epoch that training continues with: its own
    batch, or 0 when that is not a multiple of `steps_per_execution`."""
    if not record.batch:
        return 0
    spe = int(getattr(model, "steps_per_execution", 1) or 1)
    if record.batch % spe:
        warn_once(
            "position",
            f"{record.name} was saved after batch {record.batch}, which is not a "
            f"multiple of steps_per_execution={spe}: its epoch restarts at batch 0.",
        )
        return 0
    return record.batch


def skip_batches(
    model: Any,
    batches: int,
    logs: dict[str, Any],
    metrics: Any,
    warn_once: Callable[[str, str], None],
) -> Callable[[], None]:
    """Wraps `model.train_function` so that its first calls only draw their
    `batches` from the iterator (no compute): the data order of the rest of
    the epoch is the uninterrupted one. Then the epoch's metric accumulators
    are set to `metrics`. Returns what puts the train function back."""
    spe = int(getattr(model, "steps_per_execution", 1) or 1)
    original = model.train_function
    skip = batches // spe

    def train_function(iterator: Any) -> Any:
        nonlocal skip
        if skip > 0:
            skip -= 1
            batch = None
            for _ in range(spe):
                batch = next(iterator)
            if skip == 0:
                model.train_function = original
                if metrics is not None and not training_state.set_metric_values(
                    model, metrics, batch
                ):
                    warn_once(
                        "metrics",
                        "could not restore the metric accumulators of the resumed "
                        "epoch; its epoch metrics cover the batches after the resume.",
                    )
            return logs
        return original(iterator)

    model.train_function = train_function
    return lambda: setattr(model, "train_function", original)


def position_data(
    data: Any,
    record: CheckpointRecord,
    saved: dict | None,
    say: Callable[[str], None],
    warn_once: Callable[[str, str], None],
) -> None:
    """Positions fit's training data (`data`, a `TrainingData` or `None` when
    it was not found) where it stood when `record` was saved."""
    if data is None:
        problem = "tfckpt could not find fit's training data"
    else:
        moved = data.resume(saved, record.batch) if saved is not None else None
        problem = data.not_reproducible() or moved
        if data.replayed:
            say(
                f"positioned the data: drew {data.replayed} batches that earlier "
                "epochs took from fit's single iterator (steps_per_epoch), no compute."
            )
    if problem:
        warn_once(
            "data",
            f"resuming from {record.name}: {problem}. Weights, optimizer and "
            "counters are restored exactly, but the data order after the resume "
            "is not the one an uninterrupted run would have seen.",
        )


def restored_line(base: CheckpointRecord, epochs: int | None, resuming_here: bool) -> str:
    """What the callback says after restoring `base` for a fit of `epochs`."""
    where = "resuming the interrupted fit: " if resuming_here else ""
    if epochs is not None and base.epoch >= epochs:
        return f"{where}restored {base.name}: {base.epoch} of {epochs} epochs already done."
    return (
        f"{where}restored {base.name} (epoch {base.epoch}, step {base.step}); "
        f"continuing at epoch {base.epoch + 1}."
    )


def recorded_fits(manager: Any, record: CheckpointRecord) -> list[dict[str, Any]]:
    """The fits of the run up to `record`, as its state records them (`[]`
    when it holds none, or none of the shape tfckpt writes)."""
    try:
        fits = manager.state(record).get("fits", [])
    except Exception:  # a damaged state: the restore that follows says how
        return []
    ok = isinstance(fits, list) and all(
        isinstance(f, dict)
        and isinstance(f.get("phase"), dict)
        and all(isinstance(f.get(k), int) and f[k] >= 0 for k in ("first_epoch", "epochs"))
        for f in fits
    )
    return fits if ok else []


def _matches(fits: list[dict[str, Any]], index: int, now: dict[str, Any]) -> bool:
    """The run's fit number `index` was in this training phase."""
    return index < len(fits) and tf_checkpoint.phase_change(fits[index]["phase"], now) is None


def _completed_before(
    fits: list[dict[str, Any]], index: int, now: dict[str, Any], epochs: int | None
) -> bool:
    """This fit of a rerun script is one that completed before the fit that
    saved the newest checkpoint (a later one) began: the same training phase
    and the same `epochs` argument (a script that calls fit with other
    arguments is another script, and trains on from the newest checkpoint)."""
    return (
        index < len(fits) - 1
        and fits[index]["epochs"] == (epochs or 0)
        and _matches(fits, index, now)
    )


def _first_epoch(fits: list[dict[str, Any]], index: int, base: Any) -> int | None:
    if base is None or index >= len(fits) or fits[index]["first_epoch"] > base.epoch:
        return None
    return fits[index]["first_epoch"]
