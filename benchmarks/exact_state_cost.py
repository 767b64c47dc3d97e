"""What exact resumption adds to a save: capturing random state, other
callbacks' state and metric accumulators, and encoding them (JSON).

    python benchmarks/exact_state_cost.py [--repeats 50]

Prints the median time per save of that extra work beside the median time of
the whole save, measured side by side in one process.
"""

import argparse
import os
import statistics
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras
import numpy as np

import tfckpt
from tfckpt.fit import training_state
from tfckpt.store import state_files

p = argparse.ArgumentParser()
p.add_argument("--repeats", type=int, default=50)
args = p.parse_args()

model = keras.Sequential(
    [
        keras.Input((256,)),
        keras.layers.Dense(512, activation="relu"),
        keras.layers.Dropout(0.2),
        keras.layers.Dense(512, activation="relu"),
        keras.layers.Dropout(0.2),
        keras.layers.Dense(10),
    ]
)
model.compile("adam", "mse", metrics=["mae"])
model.fit(np.zeros((64, 256)), np.zeros((64, 10)), epochs=1, verbose=0)
stoppers = [keras.callbacks.EarlyStopping(), keras.callbacks.ReduceLROnPlateau()]
for cb in stoppers:
    cb.set_model(model)
    cb.on_train_begin()

extra, whole = [], []
with tempfile.TemporaryDirectory() as d, tfckpt.CheckpointManager(d, model) as manager:
    for _ in range(args.repeats):
        t0 = time.perf_counter()
        state = {
            "rng": training_state.random_state(model),
            "callbacks": training_state.callback_states(stoppers),
            "metrics_variables": training_state.metric_values(model),
        }
        state_files.encode(state)
        t1 = time.perf_counter()
        manager.save(epoch=1, state=state)
        t2 = time.perf_counter()
        extra.append(t1 - t0)
        whole.append(t2 - t0)
n = sum(int(np.prod(v.shape)) for v in model.weights)
print(f"model: {n:,} weights; {args.repeats} saves")
print(f"exact-resume state per save: {statistics.median(extra) * 1e3:.2f} ms (median)")
print(f"whole save (fsync'd, checksummed): {statistics.median(whole) * 1e3:.1f} ms (median)")
print(f"share: {statistics.median(extra) / statistics.median(whole):.1%}")
