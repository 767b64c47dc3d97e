"""Trains with a file-size limit (RLIMIT_FSIZE) so the second save fails with a
real OS error (EFBIG), as a full disk would.

    python disk_full.py DIR raise|warn
"""

import support  # noqa: F401  # isort: skip (first: it sets the environment keras reads on import)
import json
import resource
import signal
import sys

import keras
import numpy as np

import tfckpt

directory, mode = sys.argv[1], sys.argv[2]
async_save = "--async" in sys.argv
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # get EFBIG instead of being killed

keras.utils.set_random_seed(0)
x = np.random.rand(64, 256).astype("float32")
y = np.random.rand(64, 1).astype("float32")
model = keras.Sequential([keras.Input((256,)), keras.layers.Dense(1024), keras.layers.Dense(1)])
model.compile(keras.optimizers.Adam(), "mse")  # 263 k weights: ~3 MiB with Adam slots

cb = tfckpt.CheckpointCallback(
    directory, monitor=None, keep_last=1, on_save_error=mode, async_save=async_save, verbose=0
)
model.fit(x, y, epochs=1, verbose=0, callbacks=[cb])  # the first checkpoint: unlimited

soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
resource.setrlimit(resource.RLIMIT_FSIZE, (1 << 20, hard))  # no file over 1 MiB
result = {}
try:
    history = model.fit(x, y, epochs=3, verbose=0, callbacks=[cb])
    result["epochs_run"] = history.epoch
except tfckpt.CheckpointWriteError as e:
    result["error"] = str(e)
print(json.dumps(result))
