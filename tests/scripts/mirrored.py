"""Training under MirroredStrategy over two logical CPUs, with the callback.

    python mirrored.py DIR --epochs E [--kill-at-epoch K] [--async-save]
                           [--save-freq N] --out OUT.npz

Writes the final model and optimizer variables to OUT (NumPy .npz), and the
checkpoint it restored from (if any) as `restored_step`.
"""

import support  # isort: skip (first: it sets the environment keras reads on import)
import argparse
import os
import signal

import keras
import numpy as np
import tensorflow as tf

import tfckpt

p = argparse.ArgumentParser()
p.add_argument("directory")
p.add_argument("--epochs", type=int, default=3)
p.add_argument("--kill-at-epoch", type=int, default=None)
p.add_argument("--save-freq", default="epoch")
p.add_argument("--async-save", action="store_true")
p.add_argument("--out", required=True)
args = p.parse_args()

cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
assert strategy.num_replicas_in_sync == 2

keras.utils.set_random_seed(1)
x, y = support.draw_data(np.random.default_rng(0), 256, 10)

with strategy.scope():
    model = keras.Sequential(
        [
            keras.Input((10,)),
            keras.layers.Dense(32, activation="relu"),
            keras.layers.Dropout(0.2),
            keras.layers.Dense(1, activation="sigmoid"),
        ]
    )
    model.compile(keras.optimizers.Adam(0.01), "binary_crossentropy", metrics=["accuracy"])


class Kill(keras.callbacks.Callback):
    def on_epoch_begin(self, epoch, logs=None):
        if epoch == args.kill_at_epoch:
            os.kill(os.getpid(), signal.SIGKILL)


save_freq = args.save_freq if args.save_freq == "epoch" else int(args.save_freq)
cb = tfckpt.CheckpointCallback(
    args.directory, save_freq=save_freq, keep_last=2, verbose=0, async_save=args.async_save
)
model.fit(
    x,
    y,
    batch_size=32,
    epochs=args.epochs,
    validation_split=0.25,
    verbose=0,
    callbacks=[cb, Kill()],
)
values = {f"w{i}": v.numpy() for i, v in enumerate(model.weights)}
values.update({f"o{i}": v.numpy() for i, v in enumerate(model.optimizer.variables)})
values["restored_step"] = np.array(cb.restored.step if cb.restored is not None else -1)
np.savez(args.out, **values)
