"""A fine-tuning script of two `fit`s: phase 1 trains a head on a frozen
base, phase 2 unfreezes the base and compiles a new optimizer.

    python two_phases.py DIR same|init_from --out OUT.json [--kill-at-run-epoch E]

`same`: both phases write into DIR; `init_from`: phase 2 writes into
DIR-phase2, forked from phase 1's run. `--kill-at-run-epoch E` SIGKILLs the
process as the run's epoch E+1 begins (phase 1 has epochs 1-2, phase 2
epochs 3-6). OUT gets a digest of the weights and phase 2's optimizer, and the
fit epochs each phase ran in this process.
"""

import support  # isort: skip (first: it sets the environment keras reads on import)
import argparse
import hashlib
import json
import os
import signal

import keras
import numpy as np
import tensorflow as tf

import tfckpt

p = argparse.ArgumentParser()
p.add_argument("directory")
p.add_argument("route", choices=("same", "init_from"))
p.add_argument("--out", required=True)
p.add_argument("--kill-at-run-epoch", type=int, default=None)
args = p.parse_args()

keras.utils.set_random_seed(0)
tf.config.experimental.enable_op_determinism()
x, y = support.make_data(64)
base = keras.Sequential([keras.Input((x.shape[1],)), keras.layers.Dense(16, activation="relu")])
model = keras.Sequential(
    [base, keras.layers.Dropout(0.2), keras.layers.Dense(1, activation="sigmoid")]
)


class Kill(keras.callbacks.Callback):
    def __init__(self, first_run_epoch):
        super().__init__()
        self.first = first_run_epoch

    def on_epoch_begin(self, epoch, logs=None):
        if args.kill_at_run_epoch == self.first + epoch:
            os.kill(os.getpid(), signal.SIGKILL)


base.trainable = False
model.compile(keras.optimizers.Adam(1e-2), "binary_crossentropy")
phase1 = model.fit(
    x, y, epochs=2, batch_size=16, verbose=0,
    callbacks=[tfckpt.CheckpointCallback(args.directory, monitor="loss"), Kill(0)],
)  # fmt: skip

base.trainable = True
model.compile(keras.optimizers.Adam(1e-3), "binary_crossentropy")
if args.route == "same":
    callback = tfckpt.CheckpointCallback(args.directory, monitor="loss")
else:
    callback = tfckpt.CheckpointCallback(
        args.directory + "-phase2", monitor="loss", init_from=args.directory
    )
phase2 = model.fit(x, y, epochs=4, batch_size=16, verbose=0, callbacks=[callback, Kill(2)])

h = hashlib.sha256()
for v in model.weights + model.optimizer.variables:
    h.update(np.ascontiguousarray(v.numpy()).tobytes())
with open(args.out, "w") as f:
    json.dump({"digest": h.hexdigest(), "phase1": phase1.epoch, "phase2": phase2.epoch}, f)
