"""Exceptions raised by tfckpt."""

from __future__ import annotations


class CheckpointError(Exception):
    """Base class of tfckpt's own errors."""


class IncompatibleCheckpointError(CheckpointError, ValueError):
    """A checkpoint does not match the model/optimizer it is restored into."""


class NoIntactCheckpointError(CheckpointError):
    """Checkpoints exist, but none of those asked for is intact."""


class CheckpointNotFoundError(CheckpointError, ValueError):
    """No checkpoint of a run matches a selection (a step, an epoch, a name,
    "best" in a run without a monitor, or a metric no checkpoint recorded)."""


class DamagedCheckpointError(CheckpointError, ValueError):
    """A checkpoint's files are damaged, or are not what tfckpt writes (a run
    directory from someone else): not read, and never deleted."""


class DirectoryLockedError(CheckpointError):
    """Another live process is writing checkpoints into the same directory."""


class CheckpointWriteError(CheckpointError, OSError):
    """A save failed with an OS error (disk full, file too large, I/O error,
    permission). Nothing partial is left and earlier checkpoints are intact."""


class CheckpointReadError(CheckpointError, OSError):
    """A run directory could not be read (an I/O or permission error on a
    listing, a manifest or a file). It is not taken for damage: nothing was
    marked or changed, and reading again may succeed."""


class CommittedWithError(CheckpointWriteError):
    """A step after a checkpoint's commit point failed (syncing the run
    directory, TF's state file, retention's listing): the checkpoint is
    committed and counts as saved; `record` describes it."""

    def __init__(self, message: str, record: object):
        super().__init__(message)
        self.record = record
