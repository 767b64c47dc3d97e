"""A sidecar evaluator of a run directory, run as a real subprocess.

    python sidecar_eval.py DIR LOG_DIR OUT

Evaluates every checkpoint of the run (the architecture of train.py) on a
fixed validation set until training finished; writes its results to OUT.
"""

import support  # isort: skip (first: it sets the environment keras reads on import)
import json
import sys

import numpy as np

import tfckpt

directory, log_dir, out = sys.argv[1:4]
xv, yv = support.draw_data(np.random.default_rng(5), 128, 16, informative=4)
model = support.make_model(features=16, units=32, optimizer="adam")  # train.py's architecture
evaluator = tfckpt.SidecarEvaluator(model, (xv, yv), directory, log_dir=log_dir, poll_interval=0.2)
results = evaluator.start()
with open(out, "w") as f:
    json.dump(results, f)
