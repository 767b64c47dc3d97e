"""What is in a run directory: the names tfckpt gives its entries, the
record of a committed checkpoint, and the manifest's checksum.

Plain data and names; reading and writing the directory is `store.py`'s job.
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
import sys
import time
import zlib
from collections.abc import Callable, Mapping
from typing import Any

import tensorflow as tf

from tfckpt.store import fs

# tfckpt/2: data shards carry no CRC-32 of our own (TF's index holds a CRC32C
# of every tensor, and the index is in the manifest with its CRC-32), so a
# save reads nothing back. tfckpt/1 manifests (CRC-32 of every file) are read.
FORMAT = "tfckpt/2"
FORMATS = ("tfckpt/1", FORMAT)
MANIFEST = "manifest.json"
PREFIX = "ckpt"
STATE_FILE = "checkpoint"  # TF's pointer to the newest checkpoint
LOCK = ".lock"
FINISHED = ".finished"  # the writer ended normally (see `finished`)
READERS = ".readers"  # readers' pins (see `pins`)
CHECKPOINT_NAME = re.compile(r"^ckpt-(\d+)$")
SHARD = re.compile(rf"^{PREFIX}\.data-(\d+)-of-(\d+)$")
TMP = ".tmp-"  # a save in progress, or left by a crash
TRASH = ".trash-"  # a checkpoint being deleted
DAMAGED = ".damaged-"  # marks a checkpoint that failed verification
# TF's temporary name for the state file (`file_io.atomic_write_string_to_file`
# appends ".tmp" and a uuid4 hex), also used by `store.write_pointer`.
STATE_TMP = re.compile(r"^checkpoint\.tmp[0-9a-f]{32}$")
# Exactly the temporaries the store makes (`begin`, `delete`): only these are
# removed as leftovers, never a user's own `.tmp-draft/`.
LEFTOVER = re.compile(r"^\.(tmp|trash)-ckpt-\d+-[0-9a-f]{8}$")
MANIFEST_LIMIT = 16 << 20  # bytes: far above any manifest, far below harm


class Corrupt(Exception):
    """A checkpoint directory whose manifest cannot be trusted."""


@dataclasses.dataclass(frozen=True)
class CheckpointRecord:
    """One committed checkpoint, as its manifest describes it.

    Attributes:
        name: directory name inside the run directory, e.g. `"ckpt-000007"`.
        seq: commit sequence number; larger is newer.
        step: global training step (optimizer iterations) at save time.
        epoch: epochs completed at save time.
        batch: batches completed in the epoch in progress (0 at epoch end).
        metrics: logs/metrics at save time.
        time: wall time of the save (seconds since the Unix epoch).
        path: the prefix `tf.train.Checkpoint.read` accepts.
        size: bytes on disk (checkpoint files, manifest excluded).
        kept: why retention keeps it (`None` when not computed or not kept).
    """

    name: str
    seq: int
    step: int
    epoch: int
    batch: int
    metrics: Mapping[str, Any]
    time: float
    path: str
    size: int
    kept: str | None = None
    manifest: Mapping[str, Any] = dataclasses.field(default_factory=dict, repr=False, compare=False)

    @property
    def directory(self) -> str:
        return self.path[: -len(PREFIX) - 1]


@dataclasses.dataclass(frozen=True)
class PendingCheckpoint:
    """A checkpoint being written: its number, name and temporary directory."""

    seq: int
    name: str
    tmp: str
    expected_size: int

    @property
    def prefix(self) -> str:
        return fs.join(self.tmp, PREFIX)


@dataclasses.dataclass(frozen=True)
class Problem:
    """A checkpoint directory that is not a valid committed checkpoint."""

    name: str
    reason: str


def jsonable(value: Any) -> Any:
    """Metric values as JSON: Python floats, non-finite ones as `None`."""
    if isinstance(value, Mapping):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    if isinstance(value, (bool, str, type(None))):
        return value
    if isinstance(value, int):
        return value
    try:
        number = float(value)
    except (TypeError, ValueError):
        return str(value)
    if hasattr(value, "dtype") and "int" in str(value.dtype):
        return int(value)
    return number if math.isfinite(number) else None


def versions() -> dict[str, str]:
    import keras

    from tfckpt import __version__

    return {
        "tfckpt": __version__,
        "tensorflow": tf.__version__,
        "keras": keras.__version__,
        "python": sys.version.split()[0],
    }


_PLAIN_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]*$")


def is_run_entry(name: str) -> bool:
    """Whether `name` (an entry of a directory) is one tfckpt puts in a run
    directory: a checkpoint, a save or deletion in progress, a damage marker
    the lock, the finished marker or readers' pins."""
    if CHECKPOINT_NAME.match(name) or name in (LOCK, FINISHED, READERS):
        return True
    rest = next((name[len(p) :] for p in (TMP, TRASH, DAMAGED) if name.startswith(p)), None)
    return rest is not None and rest.startswith("ckpt-")


def plain_name(name: object) -> bool:
    """A file name in the checkpoint's directory itself: no path, no `..`."""
    return isinstance(name, str) and bool(_PLAIN_NAME.match(name)) and ".." not in name


def record_from_manifest(
    name: str, seq: int, path: str, manifest: Mapping[str, Any]
) -> CheckpointRecord:
    """The record of a checkpoint just committed with `manifest`."""
    return CheckpointRecord(
        name=name,
        seq=seq,
        step=int(manifest["step"]),
        epoch=int(manifest["epoch"]),
        batch=int(manifest["batch"]),
        metrics=dict(manifest["metrics"]),
        time=float(manifest["time"]),
        path=path,
        size=sum(int(f["size"]) for f in manifest["files"].values()),
        manifest=manifest,
    )


def same_checkpoint(a: CheckpointRecord, b: CheckpointRecord) -> bool:
    """Whether two checkpoints hold the same bytes: same point and time, same
    files with the same sizes and checksums (CRC-32 of the index, whose
    per-tensor CRC32C covers the data shards; xxh3 of shards where both
    recorded it)."""
    if (a.step, a.epoch, a.batch, a.time) != (b.step, b.epoch, b.batch, b.time):
        return False
    fa, fb = a.manifest["files"], b.manifest["files"]
    if set(fa) != set(fb):
        return False
    for fname, ea in fa.items():
        eb = fb[fname]
        if ea["size"] != eb["size"]:
            return False
        for key in ("crc32", "xxh3"):
            if key in ea and key in eb and ea[key] != eb[key]:
                return False
    return True


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    """A finite JSON number (what `jsonable` writes; Python's json reads
    `Infinity` and `NaN` too)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _is_time(value: Any) -> bool:
    return _is_number(value) and 0 <= value < 2**35  # a time.time() before the year 3000


def _optional(value: Any, kind: Callable[[Any], bool]) -> bool:
    return value is None or kind(value)


def _file_entry(entry: Any) -> bool:
    return (
        isinstance(entry, dict)
        and _is_int(entry.get("size"))
        and entry["size"] >= 0
        and _optional(entry.get("crc32"), _is_int)
        and _optional(entry.get("mtime_ns"), _is_int)
        and _optional(entry.get("xxh3"), lambda v: isinstance(v, str))
        and _optional(entry.get("shared"), lambda v: isinstance(v, str))
    )


def _dict_of(**fields: Callable[[Any], bool]) -> Callable[[Any], bool]:
    return lambda value: (
        isinstance(value, dict) and all(check(value.get(name)) for name, check in fields.items())
    )


_MANIFEST_SHAPE: dict[str, Callable[[Any], bool]] = {
    "seq": lambda v: _is_int(v) and v >= 0,
    "step": lambda v: _is_int(v) and v >= 0,
    "epoch": lambda v: _is_int(v) and v >= 0,
    "batch": lambda v: _is_int(v) and v >= 0,
    "time": _is_time,
    "metrics": lambda v: isinstance(v, dict),
    "files": lambda v: isinstance(v, dict) and all(_file_entry(e) for e in v.values()),
    "monitor": lambda v: _optional(
        v, _dict_of(name=lambda n: isinstance(n, str), mode=lambda m: m in ("min", "max"))
    ),
    "best": lambda v: _optional(v, _dict_of(value=_is_number, step=_is_int, epoch=_is_int)),
    "parent": lambda v: _optional(
        v,
        _dict_of(
            directory=lambda d: isinstance(d, str),
            name=lambda n: isinstance(n, str),
            step=lambda n: _optional(n, _is_int),
            epoch=lambda n: _optional(n, _is_int),
        ),
    ),
    "retention": lambda v: _optional(
        v,
        _dict_of(
            keep_last=lambda n: _optional(n, _is_int),
            keep_best=lambda n: _optional(n, _is_int),
            keep_every_n_epochs=lambda n: _optional(n, _is_int),
            keep_every_n_hours=lambda n: _optional(n, _is_number),
        ),
    ),
    "contents": lambda v: _optional(
        v, lambda c: isinstance(c, list) and all(isinstance(x, str) for x in c)
    ),
    "build_config": lambda v: _optional(v, lambda c: isinstance(c, dict)),
    "supersedes": lambda v: _optional(v, lambda b: isinstance(b, bool)),
    "phase": lambda v: _optional(v, lambda p: isinstance(p, dict)),
}


def manifest_shape_problem(manifest: Any) -> str | None:
    """Which field of a manifest does not have the type tfckpt writes it with
    (`None`: all do). Readers rely on these types; a manifest from someone
    else's run directory is checked before it is used."""
    if not isinstance(manifest, dict):
        return f"it holds a {type(manifest).__name__}, not an object"
    for name, check in _MANIFEST_SHAPE.items():
        if not check(manifest.get(name)):
            return f"{name!r} is not what tfckpt writes there ({manifest.get(name)!r:.80})"
    return None


def check_manifest(name: str, seq: int, manifest: Any) -> None:
    """Raises `Corrupt` unless `manifest` is one tfckpt wrote for checkpoint
    `name` (`seq`): its checksum matches, every field has the type tfckpt
    writes, no file name leads outside the checkpoint's own directory, and it
    lists a complete TF checkpoint. A manifest from someone else's run
    directory or bucket is checked before anything in it is used."""
    try:
        if manifest.get("checksum") != manifest_checksum(manifest):
            raise Corrupt("manifest.json does not match its checksum (corrupted)")
        if manifest["format"] not in FORMATS or manifest["seq"] != seq:
            raise Corrupt(f"manifest.json is not a {FORMAT} manifest for {name}")
        shape = manifest_shape_problem(manifest)
        if shape is not None:
            raise Corrupt(f"malformed manifest.json: {shape}")
        unsafe = [f for f in [manifest["prefix"], *manifest["files"]] if not plain_name(f)]
        if unsafe or manifest["prefix"] != PREFIX:
            raise Corrupt(f"manifest.json names files outside the checkpoint: {unsafe}")
        if not _complete_tf_checkpoint(manifest["files"]):
            raise Corrupt("manifest.json lists no complete TF checkpoint (index and shards)")
    except (KeyError, TypeError, ValueError, AttributeError, RecursionError) as e:
        raise Corrupt(f"malformed manifest.json ({e!r})") from None


def _complete_tf_checkpoint(files: Any) -> bool:
    """`files` holds TF's index and every data shard of one sharding."""
    shards = [SHARD.match(f) for f in files]
    counts = {int(m.group(2)) for m in shards if m}
    if f"{PREFIX}.index" not in files or len(counts) != 1:
        return False
    (count,) = counts
    return {int(m.group(1)) for m in shards if m} == set(range(count))


def manifest_checksum(manifest: Mapping[str, Any]) -> int:
    body = {k: v for k, v in manifest.items() if k != "checksum"}
    return zlib.crc32(json.dumps(body, sort_keys=True).encode())


def os_error_text(e: BaseException) -> str:
    """TF's error text without the graph-function noise around it."""
    text = getattr(e, "message", None) or str(e)
    text = re.sub(r"\{\{function_node [^}]*\}\}\s*", "", text)
    return re.sub(r"\s*\[Op:\w+\]\s*$", "", text).rstrip(". ")


def mb(n: int) -> str:
    """`n` bytes in MiB, for messages."""
    return f"{n / 2**20:.1f} MiB"


def now() -> float:
    """The wall time recorded in manifests (tests may shift it)."""
    return time.time()
