"""A sidecar evaluator of a run directory, run as a real subprocess.

    python sidecar_eval.py DIR LOG_DIR OUT

Evaluates every checkpoint of the run (the architecture of train.py) on a
fixed validation set until training finished; writes its results to OUT.
"""

import json
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")

import keras
import numpy as np

import tfckpt

directory, log_dir, out = sys.argv[1:4]
rng = np.random.default_rng(5)
xv = rng.normal(size=(128, 16)).astype("float32")
yv = (xv[:, :4].sum(axis=1) > 0).astype("float32")
model = keras.Sequential(
    [
        keras.Input((16,)),
        keras.layers.Dense(32, activation="relu"),
        keras.layers.Dense(1, activation="sigmoid"),
    ]
)
model.compile("adam", "binary_crossentropy", metrics=["accuracy"])
evaluator = tfckpt.SidecarEvaluator(model, (xv, yv), directory, log_dir=log_dir, poll_interval=0.2)
results = evaluator.start()
with open(out, "w") as f:
    json.dump(results, f)
