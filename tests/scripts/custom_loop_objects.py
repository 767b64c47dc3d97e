"""A custom training loop that brings its own state through `objects=`: an EMA
copy of the model, a step variable and a shuffled, repeated `tf.data`
iterator, with Dropout (random state) in the model.

    python custom_loop_objects.py DIR STEPS KILL_AT

Saves every 3 steps; SIGKILLs itself after step KILL_AT (-1: never). Prints
a digest of the model, the EMA model and the optimizer, and the final step.
"""

import support  # noqa: F401  # isort: skip (first: it sets the environment keras reads on import)
import hashlib
import json
import os
import signal
import sys

import keras
import numpy as np
import tensorflow as tf

import tfckpt

directory, total, kill_at = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
keras.utils.set_random_seed(0)
tf.config.experimental.enable_op_determinism()


def net():
    return keras.Sequential(
        [
            keras.Input((8,)),
            keras.layers.Dense(16, activation="relu"),
            keras.layers.Dropout(0.3),
            keras.layers.Dense(1),
        ]
    )


model, ema = net(), net()
ema.set_weights(model.get_weights())
optimizer = keras.optimizers.Adam(1e-2)
step = tf.Variable(0, dtype=tf.int64)
rng = np.random.default_rng(0)
x = rng.normal(size=(64, 8)).astype("float32")
y = x[:, :1] * 2
batches = iter(tf.data.Dataset.from_tensor_slices((x, y)).shuffle(64, seed=1).batch(8).repeat())
manager = tfckpt.CheckpointManager(
    directory, model, optimizer, objects={"ema": ema, "step": step, "data": batches}, keep_last=2
)
manager.restore()
loss_fn = keras.losses.MeanSquaredError()
while int(step) < total:
    xb, yb = next(batches)
    with tf.GradientTape() as tape:
        loss = loss_fn(yb, model(xb, training=True))
    grads = tape.gradient(loss, model.trainable_variables)
    optimizer.apply_gradients(zip(grads, model.trainable_variables))
    for e, w in zip(ema.weights, model.weights):
        e.assign(0.9 * e + 0.1 * w)
    step.assign_add(1)
    if int(step) % 3 == 0:
        manager.save(int(step), metrics={"loss": float(loss)})
    if int(step) == kill_at:
        os.kill(os.getpid(), signal.SIGKILL)
manager.close()
h = hashlib.sha256()
for v in model.weights + ema.weights + optimizer.variables:
    h.update(v.numpy().tobytes())
print(json.dumps({"digest": h.hexdigest(), "step": int(step)}))
