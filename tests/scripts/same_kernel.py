"""Exactness of a `fit` interrupted by Ctrl-C and rerun in the same process.

    python same_kernel.py DIR --data arrays|tfdata [--rebuild]

Runs an uninterrupted reference `fit` (Dropout, shuffled data, a checkpoint
every 3 steps), then the same run interrupted by a KeyboardInterrupt at step
13 (mid-epoch) and rerun in the same process with the same model and callback;
prints one JSON line with both digests (weights + optimizer state).
`--rebuild` builds the tf.data pipeline again (a new object) for the rerun.
"""

import support  # isort: skip (first: it sets the environment keras reads on import)
import argparse
import json
import os

import keras
import numpy as np
import tensorflow as tf

import tfckpt

p = argparse.ArgumentParser()
p.add_argument("directory")
p.add_argument("--data", default="arrays")
p.add_argument("--rebuild", action="store_true")
args = p.parse_args()
tf.config.experimental.enable_op_determinism()
x, y = support.draw_data(np.random.default_rng(0), 200, 12)


def data():
    if args.data == "tfdata":
        return dict(x=tf.data.Dataset.from_tensor_slices((x, y)).shuffle(200, seed=1).batch(25))
    return dict(x=x, y=y, batch_size=25, shuffle=True)


def model():
    keras.utils.set_random_seed(3)
    m = keras.Sequential(
        [
            keras.Input((12,)),
            keras.layers.Dense(16, activation="relu"),
            keras.layers.Dropout(0.3),
            keras.layers.Dense(1, activation="sigmoid"),
        ]
    )
    m.compile(keras.optimizers.Adam(1e-2), "binary_crossentropy")
    return m


class CtrlC(keras.callbacks.Callback):
    armed = True

    def on_train_batch_end(self, batch, logs=None):
        if self.armed and int(self.model.optimizer.iterations) == 13:
            self.armed = False
            raise KeyboardInterrupt


reference = model()
cb = tfckpt.CheckpointCallback(
    os.path.join(args.directory, "ref"), monitor=None, save_freq=3, verbose=0
)
reference.fit(**data(), epochs=4, verbose=0, callbacks=[cb])

m = model()
cb = tfckpt.CheckpointCallback(
    os.path.join(args.directory, "run"), monitor=None, save_freq=3, verbose=0
)
ctrl_c = CtrlC()
fit_data = data()
try:
    m.fit(**fit_data, epochs=4, verbose=0, callbacks=[cb, ctrl_c])
except KeyboardInterrupt:
    pass
history = m.fit(
    **(data() if args.rebuild else fit_data), epochs=4, verbose=0, callbacks=[cb, ctrl_c]
)
print(
    json.dumps(
        {
            "reference": support.digest(reference),
            "resumed": support.digest(m),
            "epochs_run": history.epoch,
            "iterations": int(m.optimizer.iterations),
        }
    )
)
