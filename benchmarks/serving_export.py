"""What `ServingExport` costs `fit`: the time the callback's hooks block
training per save, with and without an export of every checkpoint.

    python benchmarks/serving_export.py            # ~2 minutes on a 2-core VM
    python benchmarks/serving_export.py --quick    # a smoke run

Trains an MLP (about 40 MiB of weights + Adam state) for a few epochs, saving
every epoch, once per variant, the variants interleaved round by round:
async saves alone; async saves with `ServingExport(when="every")` (a
SavedModel export of every checkpoint); sync saves alone; sync saves with the
export. Every hook of the callback is timed (`on_train_begin`,
`on_epoch_begin`, `on_epoch_end`, batch hooks, `on_train_end`), so what a save
costs `fit` is counted wherever it happens, and so is the wait for the last
save at the end of `fit`. The export itself is timed in the observer.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras
import numpy as np

import tfckpt


class TimedCallback(tfckpt.CheckpointCallback):
    """A CheckpointCallback that adds up the time its hooks take."""

    blocked = 0.0

    def _timed(self, hook, *args):
        start = time.perf_counter()
        try:
            return getattr(super(), hook)(*args)
        finally:
            self.blocked += time.perf_counter() - start

    def on_train_begin(self, logs=None):
        self._timed("on_train_begin", logs)

    def on_epoch_begin(self, epoch, logs=None):
        self._timed("on_epoch_begin", epoch, logs)

    def on_train_batch_end(self, batch, logs=None):
        self._timed("on_train_batch_end", batch, logs)

    def on_epoch_end(self, epoch, logs=None):
        self._timed("on_epoch_end", epoch, logs)

    def on_train_end(self, logs=None):
        self._timed("on_train_end", logs)


class TimedExport(tfckpt.ServingExport):
    """A ServingExport that adds up the time its exports take."""

    spent = 0.0

    def export(self, record, **kwargs):
        start = time.perf_counter()
        try:
            return super().export(record, **kwargs)
        finally:
            self.spent += time.perf_counter() - start


def build_model(width: int) -> keras.Model:
    keras.utils.set_random_seed(0)
    model = keras.Sequential(
        [
            keras.Input((256,)),
            keras.layers.Dense(width, activation="relu"),
            keras.layers.Dense(width, activation="relu"),
            keras.layers.Dense(1),
        ]
    )
    model.compile(keras.optimizers.Adam(1e-4), "mse")
    return model


def run_variant(root: str, async_save: bool, export: bool, epochs: int, width: int) -> dict:
    shutil.rmtree(root, ignore_errors=True)
    os.makedirs(root)
    rng = np.random.default_rng(0)
    x = rng.normal(size=(512, 256)).astype("float32")
    y = rng.normal(size=(512, 1)).astype("float32")
    model = build_model(width)
    observers = [TimedExport(os.path.join(root, "serving"), when="every", keep=2)] if export else []
    cb = TimedCallback(
        os.path.join(root, "run"),
        monitor=None,
        keep_last=2,
        async_save=async_save,
        verbose=0,
        observers=observers,
    )
    start = time.perf_counter()
    model.fit(x, y, batch_size=32, epochs=epochs, verbose=0, callbacks=[cb])
    wall = time.perf_counter() - start
    if observers:
        observers[0].wait()  # exports still running after fit returned
    return {
        "fit_s": wall,
        "blocked_per_save_s": cb.blocked / epochs,
        "export_per_save_s": observers[0].spent / epochs if observers else 0.0,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="tiny sizes, one round")
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    epochs, width, rounds = (2, 64, 1) if args.quick else (6, 1800, args.rounds)
    variants = {
        "async": (True, False),
        "async + ServingExport": (True, True),
        "sync": (False, False),
        "sync + ServingExport": (False, True),
    }
    results: dict[str, list[dict]] = {name: [] for name in variants}
    with tempfile.TemporaryDirectory() as tmp:
        run_variant(os.path.join(tmp, "warmup"), True, True, 1, width)  # traces, imports
        for _ in range(rounds):
            for name, (async_save, export) in variants.items():
                results[name].append(
                    run_variant(os.path.join(tmp, "v"), async_save, export, epochs, width)
                )
    summary = {
        name: {key: float(np.median([r[key] for r in runs])) for key in runs[0]}
        for name, runs in results.items()
    }
    print(json.dumps(summary, indent=1))
    base = summary["async"]["blocked_per_save_s"]
    with_export = summary["async + ServingExport"]["blocked_per_save_s"]
    print(
        f"async: fit blocked {base:.3f} s per save alone, {with_export:.3f} s with an export "
        f"of every checkpoint ({with_export / base:.2f}x); the export itself takes "
        f"{summary['async + ServingExport']['export_per_save_s']:.3f} s per save"
    )


if __name__ == "__main__":
    main()
