"""Every save's cost to `fit` with thousands of variables, sync and async.

    python benchmarks/many_variables_fit.py                 # ~5 minutes
    python benchmarks/many_variables_fit.py --variables 6000 --epochs 5
    python benchmarks/many_variables_fit.py --collector-on   # ~10 minutes

Trains `compare.many_variables_model` (small weights and their two Adam
slots: `--variables` in all) for `--epochs` epochs of 2 steps, saving every
epoch with tfckpt's callback, sync and then async, and prints the time `fit`
waited at each epoch boundary and at its end (`compare.StepTimes`). Each
epoch is padded with `--pause` seconds of sleep, so an async save's
background write can end before the next save (a real epoch is longer than
2 steps); the pause is subtracted. The first async save makes TF's host
copy of every variable; TF's own async helper would also trace its copy
function at the second save (14.4 s at 6,002 variables).

A save holds off Python's cyclic garbage collector while TF makes its
per-variable objects (`tfckpt.store.gc_pause`). `--collector-on` also runs
both modes with the collector left on, as before that change: with about a
million live objects, every other save then starts a full collection. Each
mode's line is followed by the full collections that ran during its fit
(seconds, and the thread that ran each).
"""

from __future__ import annotations

import argparse
import gc
import os
import tempfile
import threading
import time
from types import SimpleNamespace

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras
import numpy as np
import tensorflow as tf
from compare import StepTimes, many_variables_model

import tfckpt
from tfckpt.store import gc_pause

hold = gc_pause.hold


def no_hold(timeout=None):
    """Stands in for `gc_pause.hold` with --collector-on."""
    return SimpleNamespace(release=lambda: None)


class Pause(keras.callbacks.Callback):
    def __init__(self, seconds: float):
        super().__init__()
        self.seconds = seconds

    def on_epoch_begin(self, epoch, logs=None):
        time.sleep(self.seconds)


class FullCollections:
    """Times Python's full (generation 2) collections and names their thread."""

    def __init__(self):
        self.seen: list[tuple[float, str]] = []
        self._start = 0.0
        gc.callbacks.append(self)

    def __call__(self, phase, info):
        if info["generation"] != 2:
            return
        if phase == "start":
            self._start = time.perf_counter()
        else:
            self.seen.append((time.perf_counter() - self._start, threading.current_thread().name))

    def take(self) -> str:
        seen, self.seen = self.seen, []
        return ", ".join(f"{s:.2f} s ({name})" for s, name in seen) or "none"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--variables", type=int, default=6000)
    p.add_argument("--epochs", type=int, default=5)
    p.add_argument("--pause", type=float, default=4.0)
    p.add_argument(
        "--collector-on",
        action="store_true",
        help="also run each mode with Python's collector left on during saves",
    )
    args = p.parse_args()
    model = many_variables_model(args.variables // 3)
    x = np.random.rand(64, 1).astype("float32")
    y = np.random.rand(64, 1).astype("float32")
    data = tf.data.Dataset.from_tensor_slices((x, y)).batch(32).repeat()
    model.fit(data, steps_per_epoch=2, epochs=1, verbose=0, shuffle=False)  # traces the train step
    count = len(model.weights) + len(model.optimizer.variables)
    print(
        f"{count:,} variables; seconds fit waited at each epoch boundary, then at its end",
        flush=True,
    )
    collections = FullCollections()
    modes = ["sync", "async"]
    if args.collector_on:
        modes += ["sync, collector on", "async, collector on"]
    with tempfile.TemporaryDirectory() as root:
        for i, mode in enumerate(modes):
            gc_pause.hold = no_hold if "collector on" in mode else hold
            callback = tfckpt.CheckpointCallback(
                os.path.join(root, str(i)),
                monitor=None,
                verbose=0,
                async_save=mode.startswith("async"),
            )
            collections.take()
            times = StepTimes()
            callbacks = times.around([Pause(args.pause), callback])
            model.fit(
                data,
                steps_per_epoch=2,
                epochs=args.epochs,
                verbose=0,
                shuffle=False,
                callbacks=callbacks,
            )
            gaps = times.gaps()
            waited = [g - args.pause for g in gaps[:-1]] + gaps[-1:]
            print(f"{mode}: " + " ".join(f"{w:.2f}" for w in waited), flush=True)
            print(f"  full collections: {collections.take()}", flush=True)
    gc_pause.hold = hold


if __name__ == "__main__":
    main()
