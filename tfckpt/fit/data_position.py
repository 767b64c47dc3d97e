"""Where the training data stands, so a resumed `fit` draws what an
uninterrupted one would.

`fit` gives callbacks no handle on its data; its `epoch_iterator` is found in
fit's frame. Two things decide the position beyond the batch index:

- How many iterators were created over the dataset. A `tf.data` shuffle with a
  seed and `reshuffle_each_iteration=True` (the default) draws new shuffle
  seeds for every iterator, counting from 0 for each new shuffle dataset
  object (so in a new process). A resumed run creates (and drops) as many
  iterators as the uninterrupted run had, less those this process already
  made over the same dataset object (a rerun in the same kernel), which costs
  no data: an iterator reads nothing until `next()`.
- With `steps_per_epoch`, Keras keeps one iterator across epochs; a resumed
  run must first draw the batches that earlier epochs took from it.
"""

from __future__ import annotations

import sys
import weakref
from typing import Any

import keras

from tfckpt.options import keras_version

try:  # TF's global seed, read without drawing from TF's op-seed generator
    from tensorflow.python.eager.context import global_seed as _tf_global_seed
except ImportError:  # pragma: no cover - other TF layouts
    _tf_global_seed = None

# Adapters whose fresh iterator, drawn `n` times, is where an uninterrupted
# run's iterator was after `n` batches (given the restored random state).
_REPLAYABLE = ("TFDatasetAdapter", "ArrayDataAdapter")

# Iterators this process made over each tf.data shuffle dataset (TF counts
# them per shuffle dataset object to draw each iterator's shuffle seeds).
_iterators_made: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def find_fit_frame(depth: int = 8) -> Any:
    """The frame of the `fit` that is calling a callback hook, or `None`."""
    frame = sys._getframe(1)
    for _ in range(depth):
        if frame is None:
            break
        found = frame.f_locals
        if isinstance(found.get("self"), keras.Model) and "epoch_iterator" in found:
            return frame
        frame = frame.f_back
    return None


def _datasets(dataset: Any) -> list[Any]:
    """A `tf.data` pipeline, walked from the output back to its sources."""
    found, todo = [], [dataset]
    while todo:
        ds = todo.pop()
        found.append(ds)
        inputs = getattr(ds, "_inputs", None)
        try:
            todo.extend(inputs() if callable(inputs) else [])
        except Exception:
            pass
    return found


def _shuffles(dataset: Any) -> list[Any]:
    return [ds for ds in _datasets(dataset) if type(ds).__name__ == "_ShuffleDataset"]


def _unseeded_shuffle(dataset: Any) -> bool:
    for ds in _datasets(dataset):
        seeds = getattr(ds, "_seed", None), getattr(ds, "_seed2", None)
        if type(ds).__name__ == "_ShuffleDataset" and all(
            s is not None and int(s) == 0 for s in seeds
        ):
            return True
    return False


class TrainingData:
    """Counts what `fit` draws from its training data, and replays it."""

    def __init__(self, epoch_iterator: Any) -> None:
        self._epoch_iterator = epoch_iterator
        self.iterators = 0  # created since fit began (in this and earlier processes)
        self.drawn = 0  # batches drawn from the newest iterator
        self._drawn_in_epoch = 0
        self.replayed = 0  # batches drawn again on resume to reach the saved position
        self._shuffles = []
        if self.adapter == "TFDatasetAdapter":
            dataset = getattr(epoch_iterator.data_adapter, "_dataset", None)
            try:
                self._shuffles = _shuffles(dataset) if dataset is not None else []
                for ds in self._shuffles:
                    _iterators_made.setdefault(ds, 0)
            except TypeError:  # a dataset type that takes no weak reference
                self._shuffles = []
        original = epoch_iterator._get_iterator

        def _get_iterator():
            self.iterators += 1
            self.drawn = 0
            for ds in self._shuffles:
                _iterators_made[ds] += 1
            return original()

        epoch_iterator._get_iterator = _get_iterator

    def undo(self) -> None:
        vars(self._epoch_iterator).pop("_get_iterator", None)

    @property
    def adapter(self) -> str:
        return type(getattr(self._epoch_iterator, "data_adapter", None)).__name__

    def py_dataset(self) -> Any:
        return getattr(getattr(self._epoch_iterator, "data_adapter", None), "py_dataset", None)

    def epoch_begin(self) -> None:
        self._drawn_in_epoch = 0

    def batches_done(self, done_in_epoch: int) -> None:
        self.drawn += max(0, done_in_epoch - self._drawn_in_epoch)
        self._drawn_in_epoch = done_in_epoch

    def state(self) -> dict[str, int]:
        return {"iterators": self.iterators, "drawn": self.drawn}

    def not_reproducible(self) -> str | None:
        """Why this data cannot be brought to a saved position, if it cannot."""
        adapter = self.adapter
        if adapter == "GeneratorDataAdapter":
            return (
                "the training data is a Python generator, which cannot be rewound: "
                "the resumed run trains on what the new generator yields"
            )
        if adapter == "TFDatasetAdapter" and keras_version() < (3, 7):
            return (
                f"Keras {keras.__version__} reads a tf.data dataset through one iterator "
                "made before the first epoch (Keras 3.7 and newer make one per epoch), so "
                "tfckpt cannot bring its shuffle order to the saved epoch: upgrade Keras"
            )
        if adapter == "TFDatasetAdapter":
            dataset = getattr(self._epoch_iterator.data_adapter, "_dataset", None)
            if dataset is not None and _unseeded_shuffle(dataset):
                return (
                    "the tf.data pipeline shuffles without a seed "
                    "(pass shuffle(..., seed=...) or call keras.utils.set_random_seed "
                    "before building it): the resumed epoch's order is a new one"
                )
        if adapter not in _REPLAYABLE + ("PyDatasetAdapter",):
            return f"tfckpt cannot position a {adapter}"
        if (
            adapter == "ArrayDataAdapter"
            and getattr(self._epoch_iterator.data_adapter, "_shuffle", False)
            and _tf_global_seed is not None
            and _tf_global_seed() is None
        ):
            return (
                "fit(shuffle=True) without a global seed (keras.utils.set_random_seed) "
                "shuffles differently in every process"
            )
        return None

    def _made_before(self) -> int:
        """Iterators this process already made over the dataset's shuffles."""
        return max((_iterators_made.get(ds, 0) for ds in self._shuffles), default=0)

    def resume(self, saved: dict[str, int], batch_in_epoch: int) -> str | None:
        """Puts the data where the saved run's was; returns a problem if it
        cannot. `batch_in_epoch` batches are still skipped by the caller."""
        iterators, drawn = int(saved.get("iterators", 0)), int(saved.get("drawn", 0))
        epoch_iterator = self._epoch_iterator
        persistent = bool(epoch_iterator.steps_per_epoch)
        earlier = drawn - batch_in_epoch  # drawn by earlier epochs from the same iterator
        # Iterators to make (and drop) before the one the resumed epoch reads:
        # the saved run's, less those made over this dataset object already.
        # (After a mid-epoch save, the newest one is that epoch's own.)
        before = iterators - (1 if batch_in_epoch or persistent else 0) - self._made_before()
        if before < 0 and self._shuffles:
            return (
                "this tf.data dataset object already made more iterators in this process "
                "than the saved run had, and its shuffle seeds cannot be rewound (build "
                "the dataset again, a new object, to resume exactly)"
            )
        if not persistent:
            # Each epoch makes its own iterator: make the ones before it.
            if self.adapter == "TFDatasetAdapter":
                for _ in range(max(0, before)):
                    iter(epoch_iterator._get_iterator())
            return None
        if self.adapter not in _REPLAYABLE:
            return (
                f"with steps_per_epoch, fit reads one {self.adapter} iterator across "
                "epochs, and tfckpt cannot bring a new one to where it was"
                if earlier > 0
                else None
            )
        for _ in range(max(0, before)):
            iter(epoch_iterator._get_iterator())
        iterator = iter(epoch_iterator._get_iterator())
        for _ in range(max(0, earlier)):
            next(iterator)
        self.drawn = earlier
        self.replayed = max(0, earlier)
        epoch_iterator._current_iterator = iterator
        epoch_iterator._steps_seen = earlier
        return None
