"""One `fit`'s progress through the run: what is done, what was last saved,
and when the next save is due."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass
class FitProgress:
    """Counters of the run as one `fit` advances it.

    Epochs and batches count across the whole run (every earlier `fit` and
    process included), so `save_freq` and the history carry on after a resume.
    """

    epochs_done: int = 0
    batches_total: int = 0  # training batches, across epochs and processes
    batch_in_epoch: int = 0  # batches of the current epoch done
    history: list[dict] = field(default_factory=list)  # one entry per epoch
    epoch_offset: int | None = None  # run epoch - fit epoch; None before the first
    resume_batch: int = 0  # the epoch's first batch that really trains on resume
    last_saved_step: int = -1
    last_saved_epoch: int = -1
    last_saved_total: int = 0
    save_at_epoch_end: bool = False  # a batch save fell on the epoch's last batch

    def carry_on(self, record: Any, state: dict[str, Any]) -> None:
        """Continues from `record`, whose saved `state` holds the counters."""
        self.epochs_done = record.epoch
        self.history = list(state.get("history", []))
        self.batches_total = int(state.get("batches", 0))

    def start_epoch_partway(self, batch: int) -> None:
        """A resume from mid-epoch that restarts that epoch at batch 0."""
        self.batches_total -= batch

    def saved(self, step: int) -> None:
        self.last_saved_step = step
        self.last_saved_epoch = self.epochs_done
        self.last_saved_total = self.batches_total

    def skip_failed_save(self) -> None:
        """A save that failed (on_save_error='warn') is retried at the next due one."""
        self.last_saved_total = self.batches_total

    def saved_here(self) -> bool:
        """Whether the newest checkpoint is this very point of the run."""
        return (
            self.last_saved_total == self.batches_total
            and self.last_saved_epoch == self.epochs_done
        )

    def batches_unsaved(self) -> bool:
        """Whether batches were trained since the last save."""
        return self.last_saved_total != self.batches_total

    def unsaved(self, step: int | None) -> bool:
        """Whether training went on since the last save (`step`: the optimizer's)."""
        return (
            step is not None
            and self.batches_total > 0
            and (step != self.last_saved_step or self.epochs_done != self.last_saved_epoch)
        )

    def batches_done(self, done: int) -> bool:
        """`done` batches of this epoch are trained; `False` for a batch skipped
        on resume (counted before the crash; the newest checkpoint holds it)."""
        if done <= self.batch_in_epoch:
            return False
        self.batches_total += done - self.batch_in_epoch
        self.batch_in_epoch = done
        return True

    def due(self, save_freq: str | int, done: int, steps: int | None) -> bool:
        """Whether a batch save is due after batch `done` of `steps`. A save
        due on the epoch's last batch is made at the epoch end instead
        (recorded as a completed epoch), and `False` is returned."""
        if save_freq == "epoch":
            return False
        if self.batches_total // save_freq <= self.last_saved_total // save_freq:
            return False
        if done == steps:
            self.save_at_epoch_end = True
            return False
        return True

    def epoch_begins(self, epoch: int, continuing: bool) -> bool:
        """At `fit`'s epoch `epoch`; `True` at the first epoch of this fit."""
        self.batch_in_epoch = 0
        if self.epoch_offset is not None:
            return False
        self.epoch_offset = self.epochs_done - epoch if continuing else 0
        self.batch_in_epoch = self.resume_batch
        return True

    def epoch_ends(self, epoch: int, logs: dict[str, Any]) -> bool:
        """Records fit's epoch `epoch` as done; returns whether a batch save
        was left for this epoch end."""
        self.epochs_done = epoch + 1 + (self.epoch_offset or 0)
        self.batch_in_epoch = 0
        self.history.append({"epoch": self.epochs_done, **logs})
        due, self.save_at_epoch_end = self.save_at_epoch_end, False
        return due
