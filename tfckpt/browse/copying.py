"""Copying a run, or one checkpoint of it, to another directory or storage.

Reads the source through the browsing layer (read-only), writes the
destination as its writer (its lock) through the store's commit protocol, so a
copy killed at any point leaves only complete checkpoints behind.
"""

from __future__ import annotations

import dataclasses
import os
import sys
import warnings
from collections.abc import Mapping
from typing import Any

import tensorflow as tf

from tfckpt.browse.display import human_size
from tfckpt.errors import (
    CheckpointError,
    CheckpointNotFoundError,
    CheckpointWriteError,
    DirectoryLockedError,
)
from tfckpt.options import parse_source
from tfckpt.remote.bucket import Bucket, is_remote
from tfckpt.remote.cache import sync
from tfckpt.remote.lease import Lease
from tfckpt.remote.progress import TransferProgress
from tfckpt.remote.remote_run import RemoteRun
from tfckpt.run import Run, Which, open_run
from tfckpt.store import fs
from tfckpt.store.checkpoint_store import CheckpointStore
from tfckpt.store.finished import is_finished, mark_finished
from tfckpt.store.layout import CheckpointRecord, Problem, same_checkpoint
from tfckpt.store.lock import DirectoryLock

# The marker of a damaged checkpoint (docs/on-disk.md): its name is not reused.
_DAMAGED = ".damaged-"
# Manifest fields the store writes itself at the destination (the rest is the
# checkpoint's metadata and is copied as it is).
_STORE_FIELDS = ("format", "seq", "prefix", "files", "checksum")


@dataclasses.dataclass(frozen=True)
class CopyReport:
    """What `tfckpt.copy` did.

    Attributes:
        source: the source run directory.
        destination: the destination run directory.
        copied: the checkpoints committed at the destination by this call.
        skipped: those already at the destination, identical (a rerun of a
            copy skips what an earlier one completed).
        damaged: source checkpoints that failed verification and were not
            copied (name and reason).
    """

    source: str
    destination: str
    copied: list[CheckpointRecord]
    skipped: list[CheckpointRecord]
    damaged: list[Problem]


def copy(
    src: str | os.PathLike,
    dst: str | os.PathLike,
    *,
    which: Which = None,
    epoch: int | None = None,
    quiet: bool = False,
) -> CopyReport:
    """Copies a run's committed checkpoints (or one of them) into `dst`.

    Every copied checkpoint is verified at the destination (sizes and CRC-32
    of its files, every tensor read back through TensorFlow against its
    CRC32C) before it is committed there with the same protocol as a save, so
    a copy killed at any point leaves only complete checkpoints, and running
    the same copy again completes it, skipping what is already there. Names,
    steps, epochs, metrics, history and lineage are kept, so
    `tfckpt.open(dst).best` and `init_from=dst` work as on the source. The
    source is only read; `dst` (a new or existing run directory on any
    `tf.io.gfile` filesystem) is locked as a writer for the copy. A whole-run
    copy of a run whose training finished is marked finished too, so a
    `tfckpt.watch` of `dst` ends once it has yielded every checkpoint.

    Example:

    ```python
    tfckpt.copy("runs/exp1", "gs://team/exp1")                  # the whole run
    tfckpt.copy("runs/exp1", "shared/exp1-best", which="best")  # one checkpoint
    tfckpt.copy("runs/exp1@epoch=5", "shared/exp1-e5")          # DIR@WHICH works too
    ```

    Args:
        src: the source run directory, or `"DIR@WHICH"` (`@best`, `@latest`,
            `@STEP`, `@epoch=N`, `@ckpt-NNNNNN`) for one checkpoint.
        dst: the destination run directory (created if missing).
        which: one checkpoint instead of all: `"best"`, `"latest"`, a step
            (int), a checkpoint name or a `CheckpointRecord` of `src` (see
            `Run.select`).
        epoch: instead of `which`: the checkpoint at the end of that epoch.
        quiet: `False` prints one line per checkpoint on stderr.

    Returns:
        A `CopyReport` (`copied`, `skipped`, `damaged`).

    Raises:
        DirectoryLockedError: a live writer (training, another copy) holds `dst`.
        CheckpointError: `dst` has a checkpoint of the same name with other
            content, or a damaged one of that name (nothing is overwritten).
        CheckpointNotFoundError: nothing in `src` matches the selection.
    """
    src, which, epoch = _source(src, which, epoch)
    if isinstance(dst, bytes) or not isinstance(dst, (str, os.PathLike)) or not os.fspath(dst):
        raise ValueError(f"`dst` must be a directory path. Received: dst={dst!r}")
    dst = os.fspath(dst)
    if not isinstance(quiet, bool):
        raise TypeError(f"`quiet` must be True or False. Received: quiet={quiet!r}")
    _refuse_overlap(src, dst)
    whole = which is None and epoch is None
    origin = src
    remote_problems: list[Problem] = []
    if is_remote(src):
        # Read through the local cache: downloaded verified, once.
        synced = sync(src, quiet=quiet)
        src, remote_problems = synced.directory, synced.problems
    # The marker before the listing: every checkpoint committed before the
    # source's training finished is then in it.
    finished = whole and is_finished(src)
    run = open_run(src)
    records, problems = _selected(run, which, epoch)
    problems = problems + (remote_problems if whole else [])
    if is_remote(dst):
        return _copy_to_remote(origin, dst, records, problems, finished, quiet)

    fs.makedirs(dst)
    try:
        lock = DirectoryLock(dst, exclusive=True)
    except DirectoryLockedError as e:
        raise DirectoryLockedError(
            f"Cannot copy into {dst!r} while a writer is active: {e}"
        ) from None
    store = CheckpointStore(dst, share_files=True)
    copied, skipped, damaged = [], [], list(problems)
    try:
        store.remove_leftovers()  # an interrupted copy's (or save's) temporaries
        present, dst_problems = store.scan()
        present_by_name = {r.name: r for r in present}
        bad_names = {p.name: p.reason for p in dst_problems}
        todo = []
        # Conflicts first: nothing is written when any would stop the copy.
        for record in records:
            if record.name in bad_names:
                raise CheckpointError(
                    f"Cannot copy {record.name} into {dst!r}: a checkpoint of that name "
                    f"there is damaged or incomplete ({bad_names[record.name]}). Nothing "
                    "was overwritten; remove it or copy into another directory."
                )
            if tf.io.gfile.exists(fs.join(dst, _DAMAGED + record.name)):
                raise CheckpointError(
                    f"Cannot copy {record.name} into {dst!r}: a checkpoint of that name "
                    f"was found damaged there ({_DAMAGED}{record.name}). Nothing was "
                    "overwritten; remove the marker or copy into another directory."
                )
            there = present_by_name.get(record.name)
            if there is not None and same_checkpoint(record, there):
                # Equal manifests are not equal bytes: the copy there may have
                # rotted since (or an earlier copy linked a rotten file).
                rotten = store.check(there)
                if rotten:
                    raise CheckpointError(
                        f"Cannot copy {record.name} into {dst!r}: the checkpoint of that "
                        f"name there is damaged ({rotten}). Nothing was overwritten; "
                        "remove it or copy into another directory."
                    )
            if there is None:
                todo.append(record)
            elif same_checkpoint(record, there):
                skipped.append(there)
                _say(
                    quiet,
                    f"{record.name} (step {record.step}, epoch {record.epoch}): "
                    "already there, skipped",
                )
            else:
                raise CheckpointError(
                    f"Cannot copy {record.name} into {dst!r}: a checkpoint of that name "
                    f"there has other content (step {there.step}, epoch {there.epoch}; "
                    f"the source's: step {record.step}, epoch {record.epoch}). Nothing "
                    "was overwritten; copy into another directory."
                )
        source = CheckpointStore(src)  # read-only: checks and listings
        for record in todo:
            done, reason = _copy_one(source, store, record, origin)
            if done is None:
                if reason is not None:  # None: deleted by the source's writer meanwhile
                    damaged.append(Problem(record.name, reason))
                    _say(quiet, f"{record.name}: DAMAGED in the source, not copied: {reason}")
                continue
            copied.append(done)
            _say(
                quiet,
                f"{record.name} (step {record.step}, epoch {record.epoch}, "
                f"{human_size(done.size)}): copied",
            )
            store.write_pointer(store.scan()[0])
        final = store.scan()[0]
        if final and not store.pointer_is_current(final):
            store.write_pointer(final)
        if finished and is_finished(src) and not is_finished(dst):
            # A copy of a finished run is finished: `tfckpt.watch(dst)` ends.
            mark_finished(dst)
    finally:
        store.close()
        lock.release()
    for problem in damaged:
        warnings.warn(
            f"tfckpt.copy: {problem.name} in {src!r} is damaged and was not copied: "
            f"{problem.reason}",
            stacklevel=2,
        )
    return CopyReport(origin, dst, copied, skipped, damaged)


def _copy_to_remote(
    src: str,
    dst: str,
    records: list[CheckpointRecord],
    damaged: list[Problem],
    finished: bool,
    quiet: bool,
) -> CopyReport:
    """Uploads `records` into the remote run `dst` as its writer (its lease),
    each published only once every object is verified there."""
    remote = RemoteRun(Bucket(dst))
    lease = Lease(remote.bucket)
    try:
        lease.take(wait=False)
    except DirectoryLockedError as e:
        raise DirectoryLockedError(
            f"Cannot copy into {dst!r} while a writer is active: {e}"
        ) from None
    copied, skipped = [], []
    try:
        published, _, unpublished = remote.scan()
        remote.remove_unpublished(lease, unpublished)
        present = {r.name: r for r in published}
        for record in records:  # conflicts first: nothing is written when any would stop it
            there = present.get(record.name)
            if there is not None and not same_checkpoint(record, there):
                raise CheckpointError(
                    f"Cannot copy {record.name} into {dst!r}: a checkpoint of that name "
                    f"there has other content (step {there.step}, epoch {there.epoch}; "
                    f"the source's: step {record.step}, epoch {record.epoch}). Nothing "
                    "was overwritten; copy into another directory."
                )
        for record in records:
            if record.name in present:
                skipped.append(present[record.name])
                _say(quiet, f"{record.name}: already there, skipped")
                continue
            progress = TransferProgress(f"{record.name} -> {dst}", record.size, quiet=quiet)
            remote.publish(record, lease, published=published, progress=progress)
            progress.done("uploaded and verified")
            published.append(record)
            copied.append(record)
        if finished:
            remote.mark_finished(True)
    finally:
        lease.release()
    for problem in damaged:
        warnings.warn(
            f"tfckpt.copy: {problem.name} in {src!r} is damaged and was not copied: "
            f"{problem.reason}",
            stacklevel=3,
        )
    return CopyReport(src, dst, copied, skipped, damaged)


def _source(src: Any, which: Which, epoch: int | None) -> tuple[str, Which, int | None]:
    if isinstance(src, bytes) or not isinstance(src, (str, os.PathLike)) or not os.fspath(src):
        raise ValueError(f"`src` must be a run directory or 'DIR@WHICH'. Received: src={src!r}")
    text = os.fspath(src)
    if "@" not in text or not is_remote(text) and tf.io.gfile.isdir(text):
        return text, which, epoch
    if which is not None or epoch is not None:
        raise ValueError(
            "Pass the selection either in `src` ('DIR@WHICH') or as `which`/`epoch`, not "
            f"both. Received: src={text!r}, which={which!r}, epoch={epoch!r}"
        )
    try:
        return parse_source(text)
    except ValueError as e:
        raise ValueError(str(e).replace("`init_from`", "`src`")) from None


def _selected(
    run: Run, which: Which, epoch: int | None
) -> tuple[list[CheckpointRecord], list[Problem]]:
    """The source checkpoints to copy, oldest first, and the damaged ones."""
    if which is None and epoch is None:
        records, problems = list(run.checkpoints), run.problems
        if not records and not problems:
            raise CheckpointNotFoundError(f"{run.directory!r} holds no committed checkpoint.")
        return records, problems
    if isinstance(which, CheckpointRecord):
        which = which.name  # the checkpoint of that name in `src`
    return [run.select(which, epoch=epoch)[0]], []


def _refuse_overlap(src: str, dst: str) -> None:
    """`dst` may not be `src` or inside it: a copy never writes into its source."""
    if fs.is_local(src) and fs.is_local(dst):
        a = os.path.realpath(fs.local_path(src))
        b = os.path.realpath(fs.local_path(dst))
    else:
        a, b = src.rstrip("/"), dst.rstrip("/")
    if b == a or b.startswith(a.rstrip("/") + "/"):
        raise ValueError(
            f"`dst` must not be the source run directory or inside it. Received: "
            f"src={src!r}, dst={dst!r}"
        )


def _metadata(record: CheckpointRecord, src: str) -> dict[str, Any]:
    metadata = {k: v for k, v in record.manifest.items() if k not in _STORE_FIELDS}
    origin = os.path.abspath(src) if fs.is_local(src) else src
    metadata["copied_from"] = {"directory": origin, "name": record.name}
    return metadata


def _copy_one(
    source: CheckpointStore, store: CheckpointStore, record: CheckpointRecord, src: str
) -> tuple[CheckpointRecord | None, str | None]:
    """Copies `record` into a pending checkpoint of `store`, verifies it there
    and commits it. `(None, reason)` when the copy does not verify because the
    source itself is damaged, `(None, None)` when the source's writer deleted
    it meanwhile (nothing is committed then)."""
    files: Mapping[str, Any] = record.manifest["files"]
    pending = store.begin(record.size, seq=record.seq)
    try:
        with store.guard(pending):
            for fname in files:
                # Plain names inside the checkpoint (checked by the source's scan).
                tf.io.gfile.copy(
                    fs.join(record.directory, fname),
                    fs.join(pending.tmp, fname),
                    overwrite=True,
                )
            staged = dataclasses.replace(
                record, name=os.path.basename(pending.tmp), path=pending.prefix
            )
            problem = store.check(staged) or _hashes_differ(pending.tmp, files)
    except CheckpointWriteError:
        if source.vanished(record.name):
            return None, None
        raise
    if problem is not None:
        store.abort(pending)
        if source.vanished(record.name):
            return None, None
        reason = source.check(record)
        if reason is not None:
            return None, reason
        raise CheckpointWriteError(
            f"The copy of {record.name} in {store.directory!r} does not match the source "
            f"({problem}), which is intact: nothing was committed. Copy again."
        )
    return store.finish(pending, _metadata(record, src)), None


def _hashes_differ(tmp: str, files: Mapping[str, Any]) -> str | None:
    for fname, entry in files.items():
        if "xxh3" in entry and fs.content_hash(fs.join(tmp, fname)) != entry["xxh3"]:
            return f"{fname} does not match its hash"
    return None


def _say(quiet: bool, text: str) -> None:
    if not quiet:
        print(f"tfckpt copy: {text}", file=sys.stderr, flush=True)
