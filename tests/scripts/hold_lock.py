"""Opens a CheckpointManager on DIR (taking its writer lock), says so, and sleeps."""

import support  # noqa: F401  # isort: skip (first: it sets the environment keras reads on import)
import os
import sys
import time

import keras

import tfckpt

model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])
manager = tfckpt.CheckpointManager(sys.argv[1], model)
print("locked", os.getpid(), flush=True)
time.sleep(600)
