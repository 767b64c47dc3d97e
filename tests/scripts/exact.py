"""A seeded, deterministic training run for the exact-resume tests.

    python exact.py DIR --data arrays|tfdata|tfdata-steps|pydataset|generator
                        [--save-freq N]
                        [--kill-at-step K] [--kill-at-epoch E] [--stoppers] --out OUT

The model has Dropout (and GaussianNoise for tf.data), so any random state not
restored shows up in the weights. A non-trainable `Seen` layer counts how often
each sample id was trained on: the count travels with the checkpoint, so after
kills and resumes it says whether a batch was trained twice or missed.
`--kill-at-step K` SIGKILLs the process just before training step K (mid-epoch);
`--kill-at-epoch E` just before epoch E starts; `--kill-at-epoch-end E` in the
`on_epoch_end` of epoch E of a callback listed after tfckpt's (a slow logger).
"""

import support  # isort: skip (first: it sets the environment keras reads on import)
import argparse
import json
import os
import signal
import time

import keras
import numpy as np
import tensorflow as tf

import tfckpt

p = argparse.ArgumentParser()
p.add_argument("directory")
p.add_argument("--data", default="arrays")
p.add_argument("--epochs", type=int, default=3)
p.add_argument("--save-freq", default="epoch")
p.add_argument("--kill-at-step", type=int, default=None)
p.add_argument("--kill-at-epoch", type=int, default=None)
p.add_argument(
    "--kill-at-epoch-end",
    type=int,
    default=None,
    help="SIGKILL itself in on_epoch_end of epoch E (a callback after tfckpt's)",
)
p.add_argument("--term-at-step", type=int, default=None, help="SIGTERM itself before step K")
p.add_argument(
    "--term-at-epoch-end",
    type=int,
    default=None,
    help="SIGTERM itself at the end of epoch E (after the checkpoint callback)",
)
p.add_argument("--stop-on-signal", action="store_true", help="preemption_exit_code=None")
p.add_argument("--print-steps", action="store_true", help="print each step, slowly")
p.add_argument("--stoppers", action="store_true", help="EarlyStopping + ReduceLROnPlateau")
p.add_argument("--out", required=True)
args = p.parse_args()

keras.utils.set_random_seed(3)
tf.config.experimental.enable_op_determinism()
N, F = 200, 12
rng = np.random.default_rng(0)
x = rng.normal(size=(N, F)).astype("float32")
y = (x[:, :3].sum(axis=1) + 0.3 * rng.normal(size=N) > 0).astype("float32")
ids = np.arange(N, dtype="float32")[:, None]
xi = np.concatenate([x, ids], axis=1)
xv, yv = support.draw_data(rng, 64, F)
xvi = np.concatenate([xv, np.full((64, 1), -1, "float32")], axis=1)


class Seen(keras.layers.Layer):
    """Counts, per sample id, the training steps that used it."""

    def build(self, input_shape):
        self.counts = self.add_weight(shape=(N,), initializer="zeros", trainable=False)

    def call(self, inputs, training=False):
        if training:
            sample_ids = keras.ops.cast(inputs[:, -1], "int32")
            self.counts.assign_add(keras.ops.sum(keras.ops.one_hot(sample_ids, N), axis=0))
        return inputs[:, :-1]


layers = [keras.Input((F + 1,)), Seen()]
if args.data.startswith("tfdata"):
    layers.append(keras.layers.GaussianNoise(0.2))  # random augmentation in the model
layers += [
    keras.layers.Dense(32, activation="relu"),
    keras.layers.Dropout(0.3),
    keras.layers.Dense(1, activation="sigmoid"),
]
model = keras.Sequential(layers)
model.compile(keras.optimizers.Adam(0.01), "binary_crossentropy", metrics=["accuracy"])


class Batches(keras.utils.PyDataset):
    """Batch order from Keras (`fit(shuffle=True)` shuffles batch indices with
    Python's `random`) and from the dataset's own generator, which reorders
    samples in `on_epoch_end` (saved through tfckpt's StatefulCallback
    protocol); augmentation from NumPy's global generator."""

    def __init__(self):
        super().__init__()
        self.rng = np.random.default_rng(7)
        self.order = np.arange(N)

    def on_epoch_end(self):
        self.order = self.rng.permutation(N)

    def get_checkpoint_state(self):
        return {"rng": self.rng.bit_generator.state, "order": self.order}

    def set_checkpoint_state(self, state):
        self.rng.bit_generator.state = state["rng"]
        self.order = np.asarray(state["order"])

    def __len__(self):
        return N // 25

    def __getitem__(self, i):
        idx = self.order[i * 25 : (i + 1) * 25]
        noise = np.random.normal(scale=0.05, size=(len(idx), F + 1)).astype("float32")
        noise[:, -1] = 0
        return xi[idx] + noise, y[idx]


if args.data == "arrays":
    data = dict(x=xi, y=y, batch_size=25, shuffle=True)
elif args.data == "tfdata":
    ds = tf.data.Dataset.from_tensor_slices((xi, y))
    ds = ds.shuffle(N, seed=11).batch(25)  # a new order every epoch
    data = dict(x=ds)
elif args.data == "tfdata-steps":  # one iterator across epochs
    ds = tf.data.Dataset.from_tensor_slices((xi, y)).shuffle(N, seed=11).batch(25).repeat()
    data = dict(x=ds, steps_per_epoch=N // 25)
elif args.data == "generator":

    def batches():
        while True:
            for i in range(N // 25):
                yield xi[i * 25 : (i + 1) * 25], y[i * 25 : (i + 1) * 25]

    data = dict(x=batches(), steps_per_epoch=N // 25)
else:
    data = dict(x=Batches(), shuffle=True)


class Kill(keras.callbacks.Callback):
    def on_train_batch_begin(self, batch, logs=None):
        step = int(self.model.optimizer.iterations)
        if step == args.kill_at_step:
            os.kill(os.getpid(), signal.SIGKILL)
        if step == args.term_at_step:
            os.kill(os.getpid(), signal.SIGTERM)
        if args.print_steps:
            print(f"step {step}", flush=True)
            time.sleep(0.2)

    def on_epoch_begin(self, epoch, logs=None):
        if epoch == args.kill_at_epoch:
            os.kill(os.getpid(), signal.SIGKILL)

    def on_epoch_end(self, epoch, logs=None):
        if epoch == args.kill_at_epoch_end:
            os.kill(os.getpid(), signal.SIGKILL)
        if epoch == args.term_at_epoch_end:
            os.kill(os.getpid(), signal.SIGTERM)


save_freq = args.save_freq if args.save_freq == "epoch" else int(args.save_freq)
exit_code = None if args.stop_on_signal else 42
callbacks = [
    tfckpt.CheckpointCallback(
        args.directory, save_freq=save_freq, keep_last=2, verbose=0, preemption_exit_code=exit_code
    )
]
if args.stoppers:
    callbacks += [
        keras.callbacks.EarlyStopping(
            "val_loss", patience=2, min_delta=0.003, restore_best_weights=True
        ),
        keras.callbacks.ReduceLROnPlateau("val_loss", factor=0.5, patience=1, min_delta=0.003),
    ]
callbacks.append(Kill())
history = model.fit(
    **data, epochs=args.epochs, validation_data=(xvi, yv), verbose=0, callbacks=callbacks
)

seen = model.layers[0].counts.numpy()
result = {
    "digest": support.digest(model),
    "epochs_run": history.epoch,
    "history": history.history,
    "seen_min": float(seen.min()),
    "seen_max": float(seen.max()),
    "lr": float(model.optimizer.learning_rate),
    "iterations": int(model.optimizer.iterations),
}
with open(args.out, "w") as f:
    json.dump(result, f)
