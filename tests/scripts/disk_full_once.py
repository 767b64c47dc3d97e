"""An async save fails with a real EFBIG (RLIMIT_FSIZE, as a full disk would)
for one checkpoint only; the next save, with the limit lifted, must succeed.

    python disk_full_once.py DIR loop|fit

Prints one JSON line: the tfckpt errors/warnings seen and what was committed.
"""

import support  # noqa: F401  # isort: skip (first: it sets the environment keras reads on import)
import json
import os
import resource
import signal
import sys
import time
import warnings

import keras
import numpy as np

import tfckpt

directory, mode = sys.argv[1], sys.argv[2]
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # get EFBIG instead of being killed
SOFT, HARD = resource.getrlimit(resource.RLIMIT_FSIZE)


def limit(on):
    resource.setrlimit(resource.RLIMIT_FSIZE, ((1 << 20) if on else SOFT, HARD))


def wait_for_saves():
    """Until no save is in flight (its temporary directory is gone either way)."""
    deadline = time.monotonic() + 120
    while any(e.startswith(".tmp-") for e in os.listdir(directory)):
        assert time.monotonic() < deadline, "a save never finished"
        time.sleep(0.01)


keras.utils.set_random_seed(0)
x = np.random.rand(64, 256).astype("float32")
y = np.random.rand(64, 1).astype("float32")
model = keras.Sequential([keras.Input((256,)), keras.layers.Dense(1024), keras.layers.Dense(1)])
model.compile(keras.optimizers.Adam(), "mse")  # 263 k weights: ~3 MiB with Adam slots
result = {"errors": []}
warnings.simplefilter("always")

if mode == "loop":
    manager = tfckpt.CheckpointManager(directory, model, async_save=True, keep_last=None)
    for epoch in (1, 2, 3):
        model.fit(x, y, epochs=1, verbose=0)
        limit(epoch == 2)
        try:
            manager.save(epoch=epoch)
            manager.wait()
        except Exception as e:
            result["errors"].append(f"epoch {epoch}: {type(e).__name__}: {e}")
        limit(False)
    result["expected"] = [v.numpy().tolist() for v in model.weights + model.optimizer.variables]
    manager.close()
else:

    class Limiter(keras.callbacks.Callback):
        """Listed before the CheckpointCallback: the checkpoint of epoch 2
        (saved at the end of fit's epoch 1, or as the next one begins) is
        written under the limit; the limit is lifted once it has failed."""

        def on_epoch_end(self, epoch, logs=None):
            wait_for_saves()
            limit(epoch == 1)

    cb = tfckpt.CheckpointCallback(
        directory, monitor=None, keep_last=None, async_save=True, on_save_error="warn", verbose=0
    )
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        history = model.fit(x, y, epochs=3, verbose=0, callbacks=[Limiter(), cb])
    result["errors"] = [str(w.message) for w in caught if "tfckpt" in str(w.message)]
    result["epochs_run"] = history.epoch
    result["expected"] = [v.numpy().tolist() for v in model.weights + model.optimizer.variables]

result["checkpoints"] = [
    {"epoch": r.epoch, "path": r.path, "files": sorted(r.manifest["files"])}
    for r in tfckpt.open(directory).checkpoints
]
print(json.dumps(result))
