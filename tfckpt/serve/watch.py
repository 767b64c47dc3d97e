"""`tfckpt.watch`: follow a run directory from another process and get each
checkpoint once it is committed, pinned so retention cannot pull it away."""

from __future__ import annotations

import os
import time
import warnings
from collections.abc import Iterator
from typing import Any

import tensorflow as tf

from tfckpt.errors import CheckpointReadError
from tfckpt.remote.bucket import is_remote
from tfckpt.remote.cache import cache_directory, sync
from tfckpt.store import fs
from tfckpt.store.checkpoint_store import CheckpointStore
from tfckpt.store.finished import is_finished
from tfckpt.store.layout import CheckpointRecord
from tfckpt.store.pins import Pins, remove_stale

_STARTS = ("all", "latest", "new")
_TRIES = 3  # pinning attempts of a checkpoint that fail with an I/O error


class _Retry(Exception):
    """Pinning failed with an I/O error that may pass: try again after a listing."""


class Watcher:
    """The iterator `tfckpt.watch` returns (see there). Also a context
    manager: leaving it (or `close()`) releases the pinned checkpoint."""

    def __init__(
        self,
        directory: str | os.PathLike,
        *,
        timeout: float | None = None,
        poll_interval: float = 1.0,
        start: str | int = "all",
    ):
        if not isinstance(directory, (str, os.PathLike)) or not os.fspath(directory):
            raise ValueError(
                f"`directory` must be a non-empty path. Received: directory={directory!r}"
            )
        if timeout is not None and (
            isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or timeout < 0
        ):
            raise ValueError(
                "`timeout` must be None (wait until training finishes) or a number of "
                f"seconds >= 0. Received: timeout={timeout!r}"
            )
        if (
            isinstance(poll_interval, bool)
            or not isinstance(poll_interval, (int, float))
            or not poll_interval > 0
        ):
            raise ValueError(
                f"`poll_interval` must be a number of seconds > 0. Received: "
                f"poll_interval={poll_interval!r}"
            )
        if not (start in _STARTS or (isinstance(start, int) and not isinstance(start, bool))):
            raise ValueError(
                f"`start` must be one of {_STARTS} or a step (int). Received: start={start!r}"
            )
        self.directory = os.fspath(directory)
        # A remote run is followed through its local cache, synced at each listing.
        self.url = self.directory if is_remote(self.directory) else None
        if self.url is not None:
            self.directory = cache_directory(self.url)
            fs.makedirs(self.directory, fsync=False)
        self.timeout = timeout
        self.poll_interval = float(poll_interval)
        self._start = start
        self._store = CheckpointStore(self.directory)
        self._pins = Pins(self.directory)
        self._held: CheckpointRecord | None = None
        self._last_seq: int | None = None  # newest seq listed (yielded or skipped)
        # The point (step, epoch, batch) of the last checkpoint taken from the
        # queue, if it was yielded (or stood for one that was): a checkpoint
        # that supersedes it is the same point saved again, not yielded twice.
        self._last_point: tuple[int, int, int] | None = None
        self._first = True  # no listing has succeeded yet (`start` applies to it)
        self._failures: dict[str, int] = {}  # record name -> failed pinning attempts
        self._told = False
        self._closed = False
        self._queue: list[CheckpointRecord] = []
        self._finished = False  # the marker was seen before the latest listing
        self._since = time.monotonic()  # last new checkpoint (or the start)
        remove_stale(self.directory)

    def __iter__(self) -> Watcher:
        return self

    def __next__(self) -> CheckpointRecord:
        self._release()
        # The timeout counts while the caller waits here, from a listing made
        # now: a consumer slower than `timeout` still gets what was committed
        # meanwhile.
        entered = time.monotonic()
        polled = False
        while not self._closed:
            while self._queue:
                record = self._queue[0]
                try:
                    pinned = self._take(record)
                except _Retry:
                    break  # after the next listing
                self._queue.pop(0)
                if pinned is not None:
                    self._held = pinned
                    return pinned
            if self._finished and not self._queue:
                break  # everything committed before the marker was yielded
            if polled:
                waited = time.monotonic() - max(entered, self._since)
                if self.timeout is not None and waited >= self.timeout and not self._queue:
                    break
                pause = self.poll_interval
                if self.timeout is not None and not self._queue:
                    pause = max(0.0, min(pause, self.timeout - waited))
                time.sleep(pause)
            self._poll()
            polled = True
        self.close()
        raise StopIteration

    def _poll(self) -> None:
        # The marker first: every checkpoint committed before it is then in
        # the listing that follows.
        # A bucket's client raises errors of its own (botocore's, gcsfs's).
        passing = (CheckpointReadError, OSError) if self.url is None else (Exception,)
        try:
            if self.url is not None:
                sync(self.url)
            finished = is_finished(self.directory)
            records = self._store.scan()[0]
        except passing as e:
            # Shared storage hiccups: not the end of the run; list again later.
            if not self._told:
                self._told = True
                warnings.warn(f"tfckpt.watch: {e}", stacklevel=3)
            return
        # Checkpoints are new by their name (sequence number), not their step:
        # a run restarted from an older checkpoint (a branch) saves steps
        # already seen again, and those are new checkpoints.
        new = [r for r in records if self._last_seq is None or r.seq > self._last_seq]
        if records:
            self._last_seq = max(records[-1].seq, self._last_seq or 0)
        if self._first:
            self._first = False
            if self._start == "latest":
                new = new[-1:]
            elif self._start == "new":
                new = []
        if isinstance(self._start, int):  # every listing: a branch may go below it
            new = [r for r in new if r.step >= self._start]
        if new:
            self._since = time.monotonic()
        self._queue.extend(new)
        self._finished = finished

    def _take(self, record: CheckpointRecord) -> CheckpointRecord | None:
        point = (record.step, record.epoch, record.batch)
        if record.manifest.get("supersedes") and point == self._last_point:
            # The checkpoint just yielded, saved again with later callbacks'
            # changes at an epoch end (the writer deletes the first one).
            return None
        pinned = self._pin(record)
        self._last_point = point if pinned is not None else None
        return pinned

    def _pin(self, record: CheckpointRecord) -> CheckpointRecord | None:
        try:
            pinned = self._pins.pin(record)
        except CheckpointReadError as e:
            warnings.warn(f"tfckpt.watch: skipping {record.name}: {e}", stacklevel=4)
            return None
        except (OSError, tf.errors.OpError) as e:
            # Shared storage hiccups, as in a listing: try again, then skip it.
            tries = self._failures[record.name] = self._failures.get(record.name, 0) + 1
            if tries < _TRIES:
                raise _Retry from None
            warnings.warn(
                f"tfckpt.watch: skipping {record.name} in {self.directory!r}: it could "
                f"not be pinned ({tries} tries): {type(e).__name__}: {e}",
                stacklevel=4,
            )
            return None
        if pinned is None and self._pins.problem is not None:
            warnings.warn(
                f"tfckpt.watch: skipping {record.name} in {self.directory!r}: "
                f"{self._pins.problem}.",
                stacklevel=4,
            )
        return pinned  # None: deleted before it could be pinned, or damaged

    def _release(self) -> None:
        if self._held is not None:
            self._pins.release(self._held)
            self._held = None

    def close(self) -> None:
        """Releases the pinned checkpoint; the iteration ends."""
        self._closed = True
        self._release()
        self._pins.close()

    def __enter__(self) -> Watcher:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def watch(
    directory: str | os.PathLike,
    *,
    timeout: float | None = None,
    poll_interval: float = 1.0,
    start: str | int = "all",
) -> Iterator[CheckpointRecord]:
    """Yields each checkpoint of a run directory once it is committed, in
    commit order, each once, while training goes on (from any process or
    machine that sees the directory; no lock is taken). A run restarted from
    an older checkpoint (a branch) saves steps already yielded again: those
    are new checkpoints (new names), yielded too; a checkpoint that saves the
    one just yielded again with later changes (`supersedes` in its manifest:
    an epoch end saved again) is not.

    Each record's `path` points at the reader's own pin of the checkpoint
    (hard links to its files, see the guide): it stays readable, with
    `tf.train.Checkpoint.read(record.path)` or `tfckpt`'s restore, until you
    ask for the next record or close the iterator, even when the writer's
    retention deletes the checkpoint meanwhile. A checkpoint that is not
    committed, torn, or whose small files do not match their checksums is
    never yielded (data shards are checked by TensorFlow as it reads them).

    Example:

    ```python
    for record in tfckpt.watch("runs/exp1", timeout=3600):
        tf.train.Checkpoint(model=model).read(record.path).expect_partial()
        print(record.step, model.evaluate(x_val, y_val, verbose=0))
    ```

    Args:
        directory: the run directory; it need not exist yet. A remote run
            (`"s3://bucket/exp1"`, any fsspec URL) is followed through its
            published checkpoints, each downloaded verified into a local
            cache (see `tfckpt.open`).
        timeout: end when a call for the next record has waited this many
            seconds without a new checkpoint (each call lists the directory
            first, so a consumer slower than `timeout` still gets what was
            committed meanwhile); `None` (default): only when training has
            finished.
        poll_interval: seconds between listings of the directory.
        start: `"all"` (every checkpoint already there, then new ones),
            `"latest"` (the newest one already there, then new ones), `"new"`
            (only checkpoints committed from now on), or a step: the
            checkpoints at that step or later (a branch's below it too are
            left out).

    Returns:
        An iterator of `CheckpointRecord`s (a `Watcher`, also a context
        manager). It ends by itself once the writer recorded that training
        finished (`fit` or the manager's `close()` ended normally; a crash is
        no end, so a restarted run is followed on) and every checkpoint
        committed before that was yielded, or after `timeout`.
    """
    return Watcher(directory, timeout=timeout, poll_interval=poll_interval, start=start)
