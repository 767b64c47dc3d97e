"""What the tests and their subprocess scripts (tests/scripts/) share.

Importing it sets the environment TensorFlow and Keras read when they load
(quiet C++ logs, the TensorFlow backend) where the caller has not, so it comes
before keras. Test files import names from it (`from support import
make_model`; pytest has imported it already, through conftest.py). A script
starts with `import support  # isort: skip` and uses `support.make_model`; it
finds the module on the PYTHONPATH that `script_env` gives its process.
"""

import hashlib
import os
import subprocess
import sys
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")

import keras
import numpy as np

import tfckpt

TESTS = Path(__file__).resolve().parent
ROOT = TESTS.parent
SCRIPTS = TESTS / "scripts"


# ---- subprocesses -----------------------------------------------------------


def script_env(**extra):
    """The environment of a script's process: the repository root (tfckpt) and
    tests/ (this module) on its PYTHONPATH, TensorFlow's C++ logs quiet."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(
        filter(None, [str(ROOT), str(TESTS), env.get("PYTHONPATH")])
    )
    env["TF_CPP_MIN_LOG_LEVEL"] = "3"
    env.update({k: str(v) for k, v in extra.items()})
    return env


def run_script(name, *args, timeout=300, env=None, check=False):
    """Runs tests/scripts/NAME in a fresh Python process."""
    proc = subprocess.run(
        [sys.executable, str(SCRIPTS / name), *map(str, args)],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env or script_env(),
    )
    if check and proc.returncode != 0:
        raise AssertionError(f"{name} exited {proc.returncode}:\n{proc.stdout}\n{proc.stderr}")
    return proc


def start_script(name, *args, env=None):
    """Starts tests/scripts/NAME in a fresh Python process and returns it at
    once (stdout and stderr piped, as text): the caller reads, waits or kills."""
    return subprocess.Popen(
        [sys.executable, str(SCRIPTS / name), *map(str, args)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env or script_env(),
    )


# ---- data and models --------------------------------------------------------


def draw_data(rng, n, features, informative=3):
    """`n` samples of `features` standard normal features from `rng`, labelled
    1.0 where the first `informative` features sum above zero."""
    x = rng.normal(size=(n, features)).astype("float32")
    y = (x[:, :informative].sum(axis=1) > 0).astype("float32")
    return x, y


def make_data(n=256, features=8, seed=0):
    """The tests' data set: `draw_data` from a generator seeded with `seed`."""
    return draw_data(np.random.default_rng(seed), n, features)


def architecture(features=8, units=16):
    """make_model's layers, not compiled (what inference code has)."""
    return keras.Sequential(
        [
            keras.Input((features,)),
            keras.layers.Dense(units, activation="relu"),
            keras.layers.Dense(1, activation="sigmoid"),
        ]
    )


def make_model(features=8, units=16, optimizer=None, metrics=("accuracy",), seed=0):
    keras.utils.set_random_seed(seed)
    model = architecture(features, units)
    model.compile(
        optimizer or keras.optimizers.Adam(1e-2), "binary_crossentropy", metrics=list(metrics)
    )
    return model


def small_model(value=None, build=True):
    """The smallest model with optimizer state (4 -> 3 -> 1, Adam, mse), for
    tests of what a save writes rather than of training. `value`: every weight
    set to it; `build`: Adam's slots created, as a first training step would."""
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3), keras.layers.Dense(1)])
    model.compile(keras.optimizers.Adam(), "mse")
    if build:
        model.optimizer.build(model.trainable_variables)
    if value is not None:
        fill(model, value)
    return model


def fill(model, value):
    """Sets every weight of `model` to `value`, so a restore shows which save it read."""
    for v in model.weights:
        v.assign(np.full(v.shape, value, dtype="float32"))


def fit(model, directory, epochs, data, callbacks=(), **cb_kwargs):
    """`model.fit` with a CheckpointCallback on `directory` (quiet unless
    `verbose` is given), a quarter of `data` held out for validation, batches
    of 32. Returns the callback and the history."""
    x, y = data
    cb_kwargs.setdefault("verbose", 0)
    cb = tfckpt.CheckpointCallback(str(directory), **cb_kwargs)
    history = model.fit(
        x,
        y,
        validation_split=0.25,
        epochs=epochs,
        batch_size=32,
        verbose=0,
        callbacks=[cb, *callbacks],
    )
    return cb, history


# ---- comparing states -------------------------------------------------------


def all_variables(model):
    """Model weights and optimizer variables as NumPy arrays, by position and name."""
    out = {f"model/{i}/{v.name}": v.numpy() for i, v in enumerate(model.weights)}
    if model.optimizer is not None:
        out.update(
            {
                f"opt/{i}/{v.name.split('_')[-1]}": v.numpy()
                for i, v in enumerate(model.optimizer.variables)
            }
        )
    return out


def assert_same_variables(a, b):
    assert a.keys() == b.keys()
    for k in a:
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)


def digest(model):
    """SHA-256 of the model's weights and optimizer variables, in order: equal
    digests mean a bitwise equal training state."""
    h = hashlib.sha256()
    for v in model.weights + model.optimizer.variables:
        h.update(np.ascontiguousarray(v.numpy()).tobytes())
    return h.hexdigest()


class Recorder(tfckpt.CheckpointObserver):
    """An observer that records the commits and deletions it is told of."""

    def __init__(self):
        self.events = []

    def on_commit(self, record):
        self.events.append(("commit", record.name))

    def on_delete(self, record):
        self.events.append(("delete", record.name))


def rot(path, offset):
    """Bit rot: flips one bit of the byte at `offset` of a file in place and
    puts its modification time back, as a media error leaves it."""
    st = os.stat(path)
    with open(path, "r+b") as f:
        f.seek(offset)
        byte = f.read(1)
        f.seek(offset)
        f.write(bytes([byte[0] ^ 0x01]))
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))


def cached_bytes(path):
    """How many of a file's bytes are in the page cache (util-linux `fincore`)."""
    out = subprocess.run(
        ["fincore", "--bytes", "--noheadings", "--output", "RES", str(path)],
        capture_output=True,
        text=True,
        check=True,
    )
    return int(out.stdout.strip())


def cache(path):
    """Reads a file whole, so that its pages are in the page cache."""
    with open(path, "rb") as f:
        while f.read(1 << 20):
            pass
    return cached_bytes(path)


def page_cache_droppable(directory):
    """Whether a file's cached pages in `directory` can be dropped and seen
    gone: not on tmpfs (its pages are the file), nor without `fincore`."""
    probe = Path(directory) / "page-cache-probe"
    probe.write_bytes(os.urandom(1 << 20))
    try:
        if cache(probe) == 0:
            return False
        fd = os.open(probe, os.O_RDONLY)
        try:
            os.fsync(fd)
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)
        return cached_bytes(probe) == 0
    except (OSError, subprocess.CalledProcessError):
        return False
    finally:
        probe.unlink()
