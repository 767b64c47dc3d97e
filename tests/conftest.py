import os
import shutil
import subprocess
import sys
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")

import keras
import numpy as np
import pytest

import tfckpt

ROOT = Path(__file__).resolve().parents[1]
SCRIPTS = Path(__file__).resolve().parent / "scripts"


@pytest.fixture(scope="session")
def inject_so(tmp_path_factory):
    """The fault-injection shim (tests/faults/inject.c), built for this session."""
    cc = shutil.which("cc") or shutil.which("gcc")
    assert cc, "the fault-injection tests build tests/faults/inject.c: install a C compiler (cc)"
    out = tmp_path_factory.mktemp("inject") / "inject.so"
    subprocess.run(
        [
            cc,
            "-shared",
            "-fPIC",
            "-O1",
            "-o",
            str(out),
            str(ROOT / "tests" / "faults" / "inject.c"),
            "-ldl",
        ],
        check=True,
    )
    return out


def script_env(**extra):
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
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


def make_data(n=256, features=8, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, features)).astype("float32")
    y = (x[:, :3].sum(axis=1) > 0).astype("float32")
    return x, y


def make_model(features=8, units=16, optimizer=None, metrics=("accuracy",), seed=0):
    keras.utils.set_random_seed(seed)
    model = keras.Sequential(
        [
            keras.Input((features,)),
            keras.layers.Dense(units, activation="relu"),
            keras.layers.Dense(1, activation="sigmoid"),
        ]
    )
    model.compile(
        optimizer or keras.optimizers.Adam(1e-2), "binary_crossentropy", metrics=list(metrics)
    )
    return model


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


@pytest.fixture
def data():
    return make_data()


class Recorder(tfckpt.CheckpointObserver):
    """An observer that records the commits and deletions it is told of."""

    def __init__(self):
        self.events = []

    def on_commit(self, record):
        self.events.append(("commit", record.name))

    def on_delete(self, record):
        self.events.append(("delete", record.name))
