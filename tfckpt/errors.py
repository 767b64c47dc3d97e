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


class DirectoryLockedError(CheckpointError):
    """Another live process is writing checkpoints into the same directory."""


class CheckpointWriteError(CheckpointError, OSError):
    """A save failed with an OS error (disk full, file too large, I/O error,
    permission). Nothing partial is left and earlier checkpoints are intact."""
