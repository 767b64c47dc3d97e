"""Opens a CheckpointManager on DIR (taking its writer lock), says so, and sleeps."""

import os
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras

import tfckpt

model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])
manager = tfckpt.CheckpointManager(sys.argv[1], model)
print("locked", os.getpid(), flush=True)
time.sleep(600)
