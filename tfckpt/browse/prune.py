"""What `Run.prune` deletes and reports: its rules, checked, and its report."""

from __future__ import annotations

import dataclasses

from tfckpt import retention as _retention
from tfckpt.browse.display import human_size
from tfckpt.options import KeepRules
from tfckpt.store.checkpoint_store import CheckpointStore
from tfckpt.store.layout import CheckpointRecord, Problem


def prune_policy(
    monitor: tuple[str, str] | None, directory: str, keep: KeepRules
) -> _retention.RetentionPolicy:
    """The policy `Run.prune` applies: the union of the rules in `keep`;
    `monitor` is the run's (name, mode), for `keep_best`."""
    if not keep.given():
        raise ValueError(
            "prune needs at least one rule (keep_last, keep_best, keep_every_n_epochs, "
            "keep_every_n_hours or retention); with none, every checkpoint but the "
            "newest would be deleted. Pass e.g. keep_last=3."
        )
    keep.check_monitor(
        monitor[0] if monitor else None,
        f"but run {directory!r} tracks none (it was saved with monitor=None). Pass "
        "retention=tfckpt.retention.KeepBest(k, metric, mode) instead.",
    )
    return keep.policy(monitor[0] if monitor else None, monitor[1] if monitor else "min")


@dataclasses.dataclass(frozen=True)
class PruneReport:
    """What `Run.prune` deleted (or, in a dry run, would delete).

    Attributes:
        directory: the run directory.
        dry_run: whether this was only a report.
        deleted: the checkpoints deleted (or to be deleted), oldest first.
        kept: the checkpoints that stay, each with the reason (`record.kept`).
        damaged: checkpoint directories left alone because they are damaged or
            not committed (never deleted).
    """

    directory: str
    dry_run: bool
    deleted: list[CheckpointRecord]
    kept: list[CheckpointRecord]
    damaged: list[Problem]
    freed: int | None = None

    @property
    def bytes_freed(self) -> int:
        """Bytes the deletion frees: the deleted checkpoints' files that no
        kept checkpoint shares (see incremental checkpoints)."""
        return self.freed if self.freed is not None else sum(r.size for r in self.deleted)

    def __repr__(self) -> str:
        verb = "would delete" if self.dry_run else "deleted"
        lines = [
            f"<tfckpt.PruneReport {self.directory!r}: {verb} {len(self.deleted)} of "
            f"{len(self.deleted) + len(self.kept)} checkpoints, "
            f"{human_size(self.bytes_freed)} freed{' (dry run)' * self.dry_run}"
        ]
        lines += [f"  delete {r.name}  step {r.step}  epoch {r.epoch}" for r in self.deleted]
        lines += [
            f"  keep   {r.name}  step {r.step}  epoch {r.epoch}  ({r.kept})" for r in self.kept
        ]
        lines += [f"  leave  {p.name}  (damaged: {p.reason})" for p in self.damaged]
        return "\n".join(lines) + ">"


def prune_checkpoints(
    store: CheckpointStore,
    records: list[CheckpointRecord],
    problems: list[Problem],
    *,
    dry_run: bool,
) -> PruneReport:
    """Deletes the `records` not kept (`record.kept` is `None`), after checking
    each; a damaged one is left on disk and reported. `problems`: the run's
    directories that are not committed checkpoints (never deleted)."""
    kept = [r for r in records if r.kept]
    doomed = [r for r in records if not r.kept]
    damaged = list(problems)
    deleted = []
    for record in doomed:
        reason = store.check(record)
        if reason is None:
            deleted.append(dataclasses.replace(record, kept=None))
            continue
        damaged.append(Problem(record.name, reason))
        if not dry_run:
            store.mark_damaged(record.name, reason)
    freed = store.freed_bytes(deleted)
    if not dry_run and deleted:
        store.write_pointer(kept)
        try:
            for record in deleted:
                store.delete(record)
        finally:
            store.close()  # the space is free when prune returns
    return PruneReport(store.directory, dry_run, deleted, kept, damaged, freed)
