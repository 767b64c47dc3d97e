"""A trainer exporting its best checkpoints for TF Serving, run as a real
subprocess.

    python serve_train.py DIR BASE_DIR [--epochs N] [--async] [--kill-in-export K]

`--kill-in-export K` SIGKILLs the process in the middle of its K-th export
(the SavedModel written under its temporary name, not yet renamed).
"""

import support  # isort: skip (first: it sets the environment keras reads on import)
import argparse
import os
import signal

import keras
import numpy as np

import tfckpt

p = argparse.ArgumentParser()
p.add_argument("directory")
p.add_argument("base_dir")
p.add_argument("--epochs", type=int, default=5)
p.add_argument("--async", dest="async_save", action="store_true")
p.add_argument("--kill-in-export", type=int, default=None)
args = p.parse_args()

x, y = support.draw_data(np.random.default_rng(0), 256, 16, informative=4)
model = support.make_model(features=16, units=16, metrics=(), seed=1)

if args.kill_in_export is not None:
    exports = []
    original = keras.Sequential.export

    def export(self, filepath, *a, **kw):
        original(self, filepath, *a, **kw)  # written under its temporary name
        exports.append(filepath)
        if len(exports) == args.kill_in_export:
            os.kill(os.getpid(), signal.SIGKILL)

    keras.Sequential.export = export

serving = tfckpt.ServingExport(args.base_dir, keep=2)  # the callback's model
cb = tfckpt.CheckpointCallback(
    args.directory,
    monitor="val_loss",
    keep_last=2,
    save_freq="epoch",
    async_save=args.async_save,
    observers=[serving],
)
# Validation on the training data: val_loss keeps improving, so most epochs
# are a new best.
model.fit(
    x, y, validation_data=(x, y), batch_size=32, epochs=args.epochs, verbose=0, callbacks=[cb]
)
serving.wait()
print("exported", serving.exported)
