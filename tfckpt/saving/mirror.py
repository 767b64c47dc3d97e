"""The remote tier: a run's checkpoints uploaded to a bucket beside
training, and the newest of them brought back on a fresh machine.

A checkpoint is committed locally first (at the disk's speed); the mirror
uploads it from a background thread at a lower priority, so `fit` waits for
no network. Only the newest due checkpoint waits its turn: when uploads
fall behind saves, older ones are skipped rather than queued. A failed
upload is retried with backoff, then reported once, and training goes on;
the next due checkpoint tries again. `close()` uploads the run's newest
checkpoint and waits for it, so the end of `fit` and a preemption save are
in the bucket before the process exits.
"""

from __future__ import annotations

import dataclasses
import threading
import time
import warnings
from collections.abc import Callable

from tfckpt.errors import CheckpointReadError, DirectoryLockedError
from tfckpt.options import KeepRules, MirrorOptions
from tfckpt.remote.bucket import Bucket
from tfckpt.remote.lease import Lease, LeaseLost
from tfckpt.remote.progress import TransferProgress
from tfckpt.remote.remote_run import LocalDamage, RemoteRun
from tfckpt.retention import RetentionPolicy
from tfckpt.store.background import lower_thread_priority
from tfckpt.store.checkpoint_store import CheckpointStore
from tfckpt.store.layout import DAMAGED, CheckpointRecord

RETRY_DELAYS = (1.0, 2.0, 4.0, 8.0)  # seconds between the attempts of one upload


@dataclasses.dataclass(frozen=True)
class Upload:
    """One published checkpoint: bytes sent over the network, bytes copied
    inside the store (files an earlier upload holds) and seconds taken."""

    name: str
    sent: int
    copied: int
    seconds: float


class Mirror:
    """Uploads the checkpoints of `store` to `options.url`.

    Args:
        store: the local run directory (its writer holds the lock).
        options: the remote tier's settings.
        monitor, mode: the metric the remote `keep_best` ranks by.
        report: called with one line per uploaded checkpoint (the callback's
            verbose output), or `None`.
    """

    def __init__(
        self,
        store: CheckpointStore,
        options: MirrorOptions,
        *,
        monitor: str | None,
        mode: str,
        report: Callable[[str], None] | None = None,
    ):
        self.store = store
        self.options = options
        self.url = options.url
        self.remote = RemoteRun(Bucket(options.url, options.storage_options), writer=True)
        self.lease = Lease(self.remote.bucket)
        keep = KeepRules(options.keep_last, options.keep_best if monitor else 0)
        self._policy: RetentionPolicy = keep.policy(monitor, mode)
        self.report = report
        self.uploads: list[Upload] = []
        self.published: list[CheckpointRecord] = []
        self.failure: str | None = None  # the last upload's error, until one succeeds
        self._cond = threading.Condition()
        self._due: CheckpointRecord | None = None
        self._busy = False
        self._stop = False
        self._since = 0  # commits since the last upload
        self._last_upload = 0.0
        self._thread: threading.Thread | None = None

    # ---- in the foreground, when the run directory is taken --------------

    def start(self, say: Callable[[str], None] | None = None) -> list[CheckpointRecord]:
        """Takes the remote directory's lease, removes what interrupted
        uploads left and returns the published checkpoints. Raises
        `CheckpointReadError` when the store cannot be reached (after
        retries): training does not start from scratch beside a run it cannot
        see."""
        error: BaseException | None = None
        for delay in (*RETRY_DELAYS, None):
            try:
                self.lease.take(say=say)
                records, problems, unpublished = self.remote.scan()
                # Every number there, torn uploads' too, before any is removed:
                # none is used again.
                names = [r.name for r in records] + [p.name for p in problems] + unpublished
                if names:
                    self.store.reserve(max(int(name[5:]) for name in names))
                self.remote.remove_unpublished(self.lease, unpublished)
                self.remote.mark_finished(False)
                self.published = records
                self._thread = threading.Thread(
                    target=self._loop, name="tfckpt-mirror", daemon=True
                )
                self._thread.start()
                return self.published
            except DirectoryLockedError:
                raise
            except Exception as e:  # the network's and the store's errors, all retried
                error = e
            if delay is not None:
                time.sleep(delay)
        self.lease.release()
        raise CheckpointReadError(
            f"Cannot reach the mirror {self.url!r}: {type(error).__name__}: {error}. Training "
            "did not start (it might start over beside a run it cannot see); the local "
            "directory is unchanged. Check the storage's endpoint and credentials, or pass "
            "mirror=None to train on the local tier alone."
        ) from error

    def fetch_newest(
        self,
        local: list[CheckpointRecord],
        *,
        skip: set[str] = frozenset(),  # type: ignore[assignment]
        say: Callable[[str], None] | None = None,
    ) -> CheckpointRecord | None:
        """Downloads the newest intact published checkpoint that is newer than
        every checkpoint in `local` (all of them when `local` is empty) into
        the local directory, verified; returns its local record, or `None`
        when the bucket holds nothing newer. `skip`: names that may not be
        reused locally (damaged there): such a checkpoint is committed under
        the next free number."""
        newest = max((r.seq for r in local), default=0)
        # Every name the local directory holds, damaged ones and their markers too.
        taken = {e.removeprefix(DAMAGED) for e in self.store.entries()} | set(skip)
        for record in reversed(self.published):
            if record.seq <= newest and record.name not in skip:
                break
            progress = TransferProgress(
                f"{record.name} <- {self.url}", record.size, quiet=say is None
            )
            result = self.remote.fetch(
                record, self.store, same_name=record.name not in taken, progress=progress
            )
            if isinstance(result, CheckpointRecord):
                progress.done("downloaded and verified")
                return result
            progress.done("not used")
            warnings.warn(
                f"tfckpt: {record.name} in {self.url!r} is damaged ({result}); trying an "
                "older one.",
                stacklevel=3,
            )
        return None

    # ---- after each commit ------------------------------------------------

    def committed(self, record: CheckpointRecord, *, force: bool = False) -> None:
        """A checkpoint was committed locally: upload it if it is due."""
        every = self.options.every
        with self._cond:
            self._since += 1
            if isinstance(every, int):
                due = self._since >= every
            else:
                due = time.monotonic() - self._last_upload >= every.total_seconds()
            if due or force or self._last_upload == 0.0 and not self.published:
                self._since = 0
                self._due = record
                self._cond.notify_all()

    def _loop(self) -> None:
        # Reading, hashing and verifying run here, below training. (The
        # network transfer itself runs in fsspec's I/O thread, which the whole
        # process shares: its priority is left as it is.)
        lower_thread_priority()
        while True:
            with self._cond:
                while self._due is None and not self._stop:
                    if not self._cond.wait(timeout=self.lease.ttl / 3):
                        break
                record, self._due = self._due, None
                if record is None and self._stop:
                    return
                self._busy = record is not None
            try:
                if record is None:
                    self.lease.renew()
                else:
                    self._upload(record)
            except LeaseLost as e:
                self._fail(str(e))
            except Exception as e:  # never ends the thread: flush() and close() rely on it
                self._fail(f"{type(e).__name__}: {e}")
            finally:
                with self._cond:
                    self._busy = False
                    self._cond.notify_all()

    def _upload(self, record: CheckpointRecord) -> None:
        start = time.monotonic()
        for attempt, delay in enumerate((*RETRY_DELAYS, None)):
            if record.seq < max((r.seq for r in self.published), default=0):
                return  # a newer one is published already
            try:
                sent = self.remote.publish(
                    record, self.lease, published=self.published, progress=self._renew
                )
                break
            except LeaseLost:
                raise
            except LocalDamage as e:
                if self.store.vanished(record.name):
                    # Deleted by local retention meanwhile: the newest instead.
                    newest = self.store.scan()[0][-1:]
                    if newest and newest[0].seq > record.seq:
                        self._upload(newest[0])
                    return
                self._fail(str(e))
                return
            except Exception as e:  # the store's and the network's errors, all retried
                error = f"{type(e).__name__}: {e}"
            if delay is None or self._stop and attempt >= 1:
                self._fail(f"uploading {record.name} failed {attempt + 1} times: {error}")
                return
            time.sleep(delay)
        seconds = time.monotonic() - start
        self._last_upload = time.monotonic()
        self.uploads.append(Upload(record.name, sent.sent, sent.copied, seconds))
        if self.failure is not None:
            self.failure = None
            self._say(f"uploads to {self.url} work again")
        self.published = [r for r in self.published if r.name != record.name] + [record]
        self.published.sort(key=lambda r: r.seq)
        copied = (
            f", {sent.copied / 2**20:.1f} MiB unchanged copied in the store" if sent.copied else ""
        )
        self._say(
            f"{record.name} uploaded to {self.url} ({sent.sent / 2**20:.1f} MiB sent{copied}, "
            f"{seconds:.1f} s)"
        )
        self._apply_retention()

    def _renew(self, sent: int) -> None:
        """Called as bytes go up: a long upload keeps the lease."""
        self.lease.renew()

    def _apply_retention(self) -> None:
        """Deletes what the remote tier's rules do not keep, and what failed
        uploads left (this writer holds the lease: nothing else is in flight)."""
        try:
            records, _, unpublished = self.remote.scan()
            self.remote.remove_unpublished(self.lease, unpublished)
        except LeaseLost:
            raise
        except Exception:
            return  # the next upload's retention tries again
        if not records:
            return
        reasons = self._policy.keep(records)
        reasons[-1] = reasons[-1] or "latest"
        for record, why in zip(records, reasons):
            if why:
                continue
            try:
                self.remote.delete(record, self.lease)
            except LeaseLost:
                raise
            except Exception:
                return  # the next upload's retention tries again
        self.published = [r for r, why in zip(records, reasons) if why]

    def _fail(self, text: str) -> None:
        if self.failure is None:
            warnings.warn(
                f"tfckpt: mirror {self.url!r}: {text}. Training goes on; the local "
                "checkpoints are intact and the next due checkpoint is uploaded again.",
                stacklevel=2,
            )
        self.failure = text

    def _say(self, text: str) -> None:
        if self.report is not None:
            self.report(text)

    # ---- the end ---------------------------------------------------------

    def flush(self) -> None:
        """Waits until no upload is due or running."""
        with self._cond:
            while (self._due is not None or self._busy) and self._alive():
                self._cond.wait(timeout=1.0)

    def _alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def close(self, newest: CheckpointRecord | None, *, finished: bool) -> None:
        """Uploads `newest` (the run's newest local checkpoint) unless it is
        published, waits for it, marks the remote run finished when
        `finished`, then gives the lease back."""
        if self._thread is None:
            return
        try:
            if newest is not None and newest.name not in {r.name for r in self.published}:
                self.committed(newest, force=True)
            self.flush()
            if finished and self.failure is None:
                try:
                    self.lease.check()  # never into another writer's run
                    self.remote.mark_finished(True)
                except Exception:
                    pass  # watchers of the bucket follow on; nothing is lost
        finally:
            with self._cond:
                self._stop = True
                self._cond.notify_all()
            self._thread.join()
            self._thread = None
            self.lease.release()
