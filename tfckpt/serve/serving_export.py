"""`ServingExport`: an observer that exports the best (or every) checkpoint as
a SavedModel in TF Serving's layout, `base_dir/<step>/`."""

from __future__ import annotations

import concurrent.futures
import json
import os
import re
import threading
import warnings
from typing import Any

from tfckpt.browse.export import remove_path, write_atomically
from tfckpt.observers import CheckpointObserver
from tfckpt.store import tf_checkpoint
from tfckpt.store.background import lower_thread_priority
from tfckpt.store.layout import CheckpointRecord
from tfckpt.store.pins import Pins

_WHEN = ("best", "every")
_VERSION = re.compile(r"^\d+$")
# write_atomically's temporary and old-version names: an interrupted export's.
_LEFTOVER = re.compile(r"^\.(tmp|trash)-[0-9a-f]{8}-\d+$")
# Inside each version a ServingExport writes: which run and checkpoint it is.
# Only versions carrying it (of the same run) are ever pruned.
MARKER = ".tfckpt-export.json"


class ServingExport(CheckpointObserver):
    """Exports the model of each new best checkpoint (or every checkpoint) as
    a TF SavedModel into `base_dir/<step>/`, the layout TF Serving polls.

    Each version is written under a temporary name and renamed into place, so
    a serving process never sees a partial one; at most `keep` versions of
    this run stay (the newest steps, and always the one just exported), and
    what an interrupted export left is removed by the next one. Versions are
    checkpoint steps; versions in `base_dir` that this run did not export
    (each export carries a small marker file saying which run and checkpoint
    it is) are never removed or replaced (a checkpoint at the same step is
    not exported, with a warning), and a warning says so when one of them is
    higher than the version just exported (TF Serving serves the highest).
    The export is made from the committed checkpoint (restored into a clone
    of `model`), not from the live model. With `async_save=True` it
    runs in a thread of its own from a pin of the checkpoint (see
    `tfckpt.watch`), so the next save does not wait for the export (making
    the pin does wait: hard links on a local run directory, a copy of the
    checkpoint's files where there are none); otherwise in the save, as other
    observers. A failed export is a warning: the checkpoint stays and
    training goes on.

    Example:

    ```python
    serving = tfckpt.ServingExport("serving/my_model", keep=3)
    cb = tfckpt.CheckpointCallback("runs/exp1", monitor="val_loss", observers=[serving])
    model.fit(..., callbacks=[cb])
    # tensorflow_model_server --model_base_path=$PWD/serving/my_model ...
    ```

    Args:
        base_dir: the model's base path for TF Serving (a local directory,
            outside the run directory); created if missing.
        model: the Keras model being trained (a Functional or Sequential
            model, which `keras.models.clone_model` can clone). By default,
            the model of the callback or manager it is passed to.
        keep: how many versions to keep (>= 1).
        when: `"best"`: each checkpoint that is a new best of the callback's
            (or manager's) `monitor`; `"every"`: every checkpoint.
    """

    def __init__(
        self,
        base_dir: str | os.PathLike,
        *,
        keep: int = 3,
        when: str = "best",
        model: Any = None,
    ):
        if not isinstance(base_dir, (str, os.PathLike)) or not os.fspath(base_dir):
            raise ValueError(
                f"`base_dir` must be a non-empty path. Received: base_dir={base_dir!r}"
            )
        if "://" in os.fspath(base_dir):
            raise ValueError(
                "`base_dir` must be a local directory (versions are renamed into place). "
                f"Received: base_dir={base_dir!r}"
            )
        if model is not None and not hasattr(model, "export"):
            raise ValueError(f"`model` must be a Keras model or None. Received: model={model!r}")
        if isinstance(keep, bool) or not isinstance(keep, int) or keep < 1:
            raise ValueError(f"`keep` must be an integer >= 1. Received: keep={keep!r}")
        if when not in _WHEN:
            raise ValueError(f"`when` must be one of {_WHEN}. Received: when={when!r}")
        self.base_dir = os.fspath(base_dir)
        self.model = model
        self.keep = keep
        self.when = when
        self.exported: list[int] = []  # steps exported by this observer, in order
        self._clone: Any = None
        self._started = False
        self._lock = threading.Lock()  # one export at a time
        self._executor: concurrent.futures.ThreadPoolExecutor | None = None
        self._pending: list[concurrent.futures.Future] = []
        self._pins: dict[str, Pins] = {}  # run directory -> pins of exports queued
        self._inflight: dict[str, int] = {}
        self._pins_lock = threading.Lock()
        self._warned_higher = False

    def set_model(self, model: Any) -> None:
        """The model of the callback or manager this observer is passed to
        (unless one was given)."""
        if self.model is None and hasattr(model, "export"):
            self.model = model

    def __repr__(self) -> str:
        return f"ServingExport({self.base_dir!r}, keep={self.keep}, when={self.when!r})"

    def _wanted(self, record: CheckpointRecord) -> bool:
        if self.when == "every":
            return True
        monitor = (record.manifest.get("monitor") or {}).get("name")
        if monitor is None:
            raise ValueError(
                "ServingExport(when='best') needs a monitor: pass monitor=... to the "
                "callback or manager, or use when='every'"
            )
        best = record.manifest.get("best") or {}
        return (
            best.get("step") == record.step
            and best.get("epoch") == record.epoch
            and record.metrics.get(monitor) == best.get("value")
        )

    def on_commit(self, record: CheckpointRecord) -> None:
        if not self._started:
            # A restarted run's first commit: what an export killed midway
            # left goes now, even when no new best comes.
            self._started = True
            with self._lock:
                if os.path.isdir(self.base_dir):
                    self._remove_leftovers()
        if not self._wanted(record):
            return
        if threading.current_thread() is threading.main_thread():
            self.export(record)  # a synchronous save: fit waits for it anyway
            return
        # A background save's thread (async_save): pin the checkpoint
        # (retention may delete it once this returns) and export in a thread
        # of our own, so the next save does not wait for the export.
        run_dir = os.path.dirname(record.directory)
        with self._pins_lock:
            pins = self._pins.setdefault(run_dir, Pins(run_dir))
            pinned = pins.pin(record)
            if pinned is None:
                raise ValueError(f"could not pin {record.name} to export it: {pins.problem}")
            self._inflight[run_dir] = self._inflight.get(run_dir, 0) + 1
        if self._executor is None:
            self._executor = concurrent.futures.ThreadPoolExecutor(
                max_workers=1,
                thread_name_prefix="tfckpt-serving",
                initializer=lower_thread_priority,  # yields the CPU to training
            )
        self._pending.append(self._executor.submit(self._export_pinned, run_dir, pins, pinned))

    def _export_pinned(self, run_dir: str, pins: Pins, pinned: CheckpointRecord) -> None:
        try:
            self.export(pinned, run=run_dir)
        except Exception as e:
            warnings.warn(
                f"tfckpt: observer {self!r} failed in on_commit({pinned.name}): "
                f"{type(e).__name__}: {e}. The checkpoint is unaffected.",
                stacklevel=2,
            )
        finally:
            with self._pins_lock:
                pins.release(pinned)
                self._inflight[run_dir] -= 1
                if not self._inflight[run_dir]:
                    # Nothing pinned: no reader folder left in the run directory.
                    pins.close()
                    del self._pins[run_dir], self._inflight[run_dir]

    def export(self, record: CheckpointRecord, *, run: str | None = None) -> str | None:
        """Exports `record` (readable at `record.path`) as version
        `record.step`; returns the version's directory. A version of that
        step already exported from the same checkpoint is kept as it is; one
        exported from another checkpoint of the same run is replaced. A
        version of that step that this run did not export (another run's, or
        one without the marker) is left as it is: nothing is exported, a
        warning says so, and `None` is returned.

        Args:
            record: the checkpoint.
            run: its run directory, where `record.path` is elsewhere (a pin);
                default: the directory `record.path` is in.
        """
        import keras

        if run is None:
            run = os.path.dirname(record.directory)
        origin = {
            "run": os.path.abspath(run) if "://" not in run else run,
            "checkpoint": record.name,
            "step": record.step,
            "time": record.time,
        }
        with self._lock:
            os.makedirs(self.base_dir, exist_ok=True)
            self._remove_leftovers()
            path = os.path.join(self.base_dir, str(record.step))
            there = _origin(path)
            if there == origin:
                # Already there (a rerun of the same commit): replacing it
                # would leave TF Serving a moment without that version.
                self._after_export(record.step, origin["run"])
                return path
            other = (there or {}).get("run")
            if os.path.lexists(path) and other != origin["run"]:
                # Not ours to replace: another run's version, or one made by hand.
                why = (
                    f"exported from another run ({other!r})"
                    if other is not None
                    else f"without a {MARKER} marker naming this run"
                )
                warnings.warn(
                    f"tfckpt: {self!r} did not export {record.name} as version "
                    f"{record.step}: {path!r} already holds a version {why}, which a "
                    "ServingExport never replaces or removes. Remove it, or export "
                    "into a new base_dir.",
                    stacklevel=2,
                )
                return None
            if self._clone is None:
                if self.model is None:
                    raise ValueError(
                        "ServingExport has no model: pass it in observers=[...] of a "
                        "CheckpointCallback or CheckpointManager, or model=..."
                    )
                self._clone = keras.models.clone_model(self.model)
            tf_checkpoint.read_model(self._clone, record.path, record.manifest)
            clone = self._clone

            def write(tmp: str) -> None:
                clone.export(tmp, format="tf_saved_model", verbose=False)
                with open(os.path.join(tmp, MARKER), "w") as f:
                    json.dump(origin, f)

            write_atomically(path, write)
            self._after_export(record.step, origin["run"])
            return path

    def _after_export(self, step: int, run: str) -> None:
        if step not in self.exported:
            self.exported.append(step)
        self._prune(step, run)
        higher = [v for v in self.versions() if v > step]
        if higher and not self._warned_higher:
            self._warned_higher = True
            warnings.warn(
                f"tfckpt: {self!r} exported version {step}, but {self.base_dir!r} also "
                f"holds higher versions {higher}. TF Serving serves the highest version "
                f"by default: it will not serve {step}. Versions are checkpoint steps, and "
                "a ServingExport removes only versions its own run exported; remove the "
                "others or export into a new base_dir.",
                stacklevel=3,
            )

    def _remove_leftovers(self) -> None:
        for name in os.listdir(self.base_dir):
            if _LEFTOVER.match(name):
                remove_path(os.path.join(self.base_dir, name))

    def _prune(self, written: int, run: str) -> None:
        """Keeps the newest `keep` versions this run exported (`written`, the
        one just exported, always); versions of other runs are never removed."""
        ours = [
            v
            for v in self.versions()
            if (_origin(os.path.join(self.base_dir, str(v))) or {}).get("run") == run
        ]
        ours = sorted(set(ours) - {written})
        for step in ours[: max(0, len(ours) - (self.keep - 1))]:
            remove_path(os.path.join(self.base_dir, str(step)))

    def versions(self) -> list[int]:
        """The versions in `base_dir` (steps), oldest first."""
        if not os.path.isdir(self.base_dir):
            return []
        return sorted(int(n) for n in os.listdir(self.base_dir) if _VERSION.match(n))

    def wait(self) -> None:
        """Waits for exports running in the background (async saves)."""
        pending, self._pending = self._pending, []
        concurrent.futures.wait(pending)


def _origin(version: str) -> dict[str, Any] | None:
    """What a version's marker says (which run and checkpoint it was exported
    from); `None` where there is none (not written by a ServingExport)."""
    marker = os.path.join(version, MARKER)
    try:
        if os.path.islink(marker) or not os.path.isfile(marker):
            return None
        with open(marker) as f:
            origin = json.loads(f.read(65536))
    except (OSError, ValueError, RecursionError):
        return None
    return origin if isinstance(origin, dict) else None
