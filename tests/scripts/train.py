"""A training script used by the tests, run as a real subprocess.

    python train.py DIR --epochs N [--kill-at-epoch K] [--save-freq F] [--out result.json]

It is the "same script" a user reruns after a crash: nothing in it changes
between runs. `--kill-at-epoch K` sends SIGKILL to itself right after epoch K's
checkpoint (a real kill -9, mid-run).
"""

import support  # isort: skip (first: it sets the environment keras reads on import)
import argparse
import json
import os
import signal
import sys

import keras
import numpy as np

import tfckpt

p = argparse.ArgumentParser()
p.add_argument("directory")
p.add_argument("--epochs", type=int, default=6)
p.add_argument("--kill-at-epoch", type=int, default=None)
p.add_argument("--save-freq", default="epoch")
p.add_argument("--keep-last", type=int, default=2)
p.add_argument("--units", type=int, default=32)
p.add_argument("--out", default=None)
args = p.parse_args()

rng = np.random.default_rng(0)
x, y = support.draw_data(rng, 512, 16, informative=4)
xv, yv = support.draw_data(rng, 128, 16, informative=4)
model = support.make_model(features=16, units=args.units, seed=1)


class KillAt(keras.callbacks.Callback):
    def on_epoch_begin(self, epoch, logs=None):  # runs after tfckpt's epoch-end save
        if args.kill_at_epoch is not None and epoch == args.kill_at_epoch:
            os.kill(os.getpid(), signal.SIGKILL)


save_freq = args.save_freq if args.save_freq == "epoch" else int(args.save_freq)
cb = tfckpt.CheckpointCallback(
    args.directory, monitor="val_loss", keep_last=args.keep_last, keep_best=1, save_freq=save_freq
)
history = model.fit(
    x,
    y,
    validation_data=(xv, yv),
    batch_size=64,
    epochs=args.epochs,
    verbose=0,
    callbacks=[cb, KillAt()],
)
result = {
    "epochs_run": history.epoch,
    "restored": cb.restored.name if cb.restored else None,
    "val_loss": history.history.get("val_loss", []),
    "weights_sum": float(sum(float(np.sum(w)) for w in model.get_weights())),
    "iterations": int(model.optimizer.iterations),
}
if args.out:
    with open(args.out, "w") as f:
        json.dump(result, f)
print(json.dumps(result))
sys.stdout.flush()
