"""A training run that saves every 2 batches, for kill -9 fuzzing.

    python fuzz_train.py DIR --epochs N

Prints one line per event to stdout: `restored STEP`, `saved STEP`, `done STEP`.
The model (~2.1 M weights, ~25 MB per checkpoint with Adam) is large enough for
saves to take a good share of wall time, so random kills land inside writes.
"""

import support  # noqa: F401  # isort: skip (first: it sets the environment keras reads on import)
import argparse

import keras
import numpy as np

import tfckpt

p = argparse.ArgumentParser()
p.add_argument("directory")
p.add_argument("--epochs", type=int, default=8)
p.add_argument("--async-save", action="store_true")
args = p.parse_args()

keras.utils.set_random_seed(0)
rng = np.random.default_rng(0)
x = rng.normal(size=(256, 512)).astype("float32")
y = rng.normal(size=(256, 1)).astype("float32")
model = keras.Sequential(
    [
        keras.Input((512,)),
        keras.layers.Dense(2048, activation="relu"),
        keras.layers.Dense(512, activation="relu"),
        keras.layers.Dense(1),
    ]
)
model.compile(keras.optimizers.Adam(1e-4), "mse")


class Report(keras.callbacks.Callback):
    def on_train_begin(self, logs=None):
        print("restored", int(self.model.optimizer.iterations), flush=True)

    def on_train_batch_end(self, batch, logs=None):
        latest = cb.manager.latest
        if latest is not None and latest.step != getattr(self, "_last", None):
            self._last = latest.step
            print("saved", latest.step, flush=True)


cb = tfckpt.CheckpointCallback(
    args.directory, monitor=None, save_freq=2, keep_last=2, verbose=0, async_save=args.async_save
)
model.fit(x, y, batch_size=16, epochs=args.epochs, verbose=0, callbacks=[cb, Report()])
print("done", int(model.optimizer.iterations), flush=True)
