"""Saves checkpoint A, then dies by SIGKILL at one step of checkpoint B's commit.

    python crash_commit.py DIR STEP

Weights are all 1.0 in A and all 2.0 in B, so a restore shows which one (or a
mix) a crash left behind. keep_last=1 makes B's commit delete A, so the
deletion steps are crash points too.
"""

import os
import signal
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras
import numpy as np

import tfckpt
from tfckpt.store import checkpoint_store

directory, crash_at = sys.argv[1], sys.argv[2]
model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3), keras.layers.Dense(1)])
model.compile(keras.optimizers.Adam(), "mse")
model.optimizer.build(model.trainable_variables)
manager = tfckpt.CheckpointManager(directory, model, keep_last=1)


def set_all(value):
    for v in model.weights:
        v.assign(np.full(v.shape, value, dtype="float32"))


set_all(1.0)
manager.save(epoch=1)


def crash(name):
    if name == crash_at:
        os.kill(os.getpid(), signal.SIGKILL)


checkpoint_store._commit_step = crash
set_all(2.0)
manager.save(epoch=2)
print("no crash")
