"""The versions we claim are the versions we test.

pyproject.toml allows TensorFlow and Keras from a floor up; the suite itself
runs on whatever pip resolves today (the newest). This test installs the floor
versions into a second environment (`.venv-floor/`, reused while its versions
match) and runs the tests that depend most on Keras's internals there: exact
resumption, every way out of `fit`, async saves, exports, and step-level saves
with `steps_per_execution`.
"""

import os
import re
import subprocess
import sys

import pytest
from support import ROOT, make_data, make_model

# test_exact's data kinds on the floor: arrays and tf.data (the adapters
# Keras changed most); PyDataset and steps_per_epoch run on the newest only.
KEY_TESTS = [
    "tests/test_exact.py",
    "tests/test_exit_paths.py",
    "tests/test_async.py",
    "tests/test_serving.py::test_the_callbacks_model_is_exported_and_other_versions_are_left_alone",
    "tests/test_serving.py::test_a_checkpoint_saved_before_the_optimizer_had_slots_exports",
    "tests/test_run.py::test_export_is_read_back_bitwise_by_plain_keras",
    "tests/test_run.py::test_tfckpt_export_is_a_function_of_a_run_directory",
    "tests/test_run.py::test_export_never_overwrites_unless_asked_and_never_leaves_a_partial_file",
    "tests/test_callback.py::test_step_level_saves_with_best_tracking_and_steps_per_execution",
]
VENV = ROOT / ".venv-floor"


def floors():
    """{"tensorflow": "2.16.1", "keras": "3.11"}: the `>=` floors of pyproject.toml."""
    text = (ROOT / "pyproject.toml").read_text()
    pins = dict(re.findall(r'^\s*"(tensorflow|keras)>=([\w.]+)",', text, re.MULTILINE))
    assert set(pins) == {"tensorflow", "keras"}, "pyproject.toml names no floor for both"
    return pins


VERSIONS = """
import importlib.metadata as m, importlib.util as u
print(m.version("tensorflow"), m.version("keras"), u.find_spec("tfckpt").origin)
"""


def installed(python):
    """(TensorFlow's version, Keras's, where tfckpt is imported from), or None."""
    if not python.exists():
        return None
    proc = subprocess.run([str(python), "-c", VERSIONS], capture_output=True, text=True, cwd="/")
    return proc.stdout.split() if proc.returncode == 0 else None


def pip(python, *args):
    proc = subprocess.run(
        [str(python), "-m", "pip", "install", "-q", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=1200,
    )
    assert proc.returncode == 0, proc.stdout[-5000:] + proc.stderr[-5000:]


def same(version, floor):
    """Whether an installed version is the floor (3.11 is 3.11.0)."""
    pad = lambda v: (v.split(".") + ["0", "0"])[:3]  # noqa: E731
    return pad(version) == pad(floor)


@pytest.mark.floor
def test_key_tests_pass_on_the_oldest_tensorflow_and_keras_we_claim():
    pins = floors()
    python = VENV / "bin" / "python"
    have = installed(python)
    if not (have and same(have[0], pins["tensorflow"]) and same(have[1], pins["keras"])):
        subprocess.run([sys.executable, "-m", "venv", "--clear", str(VENV)], check=True)
        pip(python, f"tensorflow=={pins['tensorflow']}", f"keras=={pins['keras']}", "-e", ".[test]")
        have = installed(python)
    elif have[2] != str(ROOT / "tfckpt" / "__init__.py"):  # this checkout's tfckpt
        pip(python, "--no-deps", "-e", ".")
        have = installed(python)
    assert have and same(have[0], pins["tensorflow"]) and same(have[1], pins["keras"]), have
    assert have[2] == str(ROOT / "tfckpt" / "__init__.py"), have
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    proc = subprocess.run(
        [
            *(str(python), "-m", "pytest", "-q", "-p", "no:cacheprovider", "-n", "0"),
            *("-k", "not pydataset and not tfdata-steps", *KEY_TESTS),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env=env,
        timeout=2400,
    )
    summary = proc.stdout.strip().splitlines()[-1:] if proc.stdout.strip() else []
    print(f"TensorFlow {have[0]}, Keras {have[1]}:", *summary)
    assert proc.returncode == 0, proc.stdout[-10000:] + proc.stderr[-3000:]


# ---- an older Keras found at run time anyway (pip was told --no-deps, a pin
# elsewhere): what it would do wrong is refused or warned about, by reason.


@pytest.fixture
def keras_version(monkeypatch):
    """Makes tfckpt read another Keras version (what it decides by is the version)."""
    import keras

    from tfckpt import options

    def set_version(version):
        monkeypatch.setattr(keras, "__version__", version)
        monkeypatch.setattr(options, "_told_old_keras", False)

    return set_version


def test_an_older_keras_refuses_step_saves_it_would_misplace(tmp_path, data, keras_version):
    import tfckpt

    keras_version("3.10.0")
    model = make_model()
    model.compile("adam", "binary_crossentropy", steps_per_execution=2)
    with pytest.warns(UserWarning, match=r"Keras 3\.10\.0 is older than 3\.11"):
        cb = tfckpt.CheckpointCallback(str(tmp_path), save_freq=5, verbose=0)
    with pytest.raises(
        ValueError,
        match=r"save_freq=5 with steps_per_execution=2 needs Keras 3\.11 or newer "
        r"\(found 3\.10\.0\).*pip install -U 'keras>=3\.11'\) or pass save_freq='epoch'",
    ):
        model.fit(*data, epochs=1, verbose=0, callbacks=[cb])
    assert not list(tmp_path.glob("ckpt-*"))
    # Epoch-end saves are placed right by every Keras 3.
    cb = tfckpt.CheckpointCallback(str(tmp_path), verbose=0)
    model.fit(*data, epochs=1, verbose=0, callbacks=[cb])
    assert [r.epoch for r in tfckpt.open(tmp_path).checkpoints] == [1]


def test_an_older_keras_says_a_tf_data_resume_is_not_exact(tmp_path, keras_version):
    import tensorflow as tf

    import tfckpt

    x, y = make_data()
    dataset = tf.data.Dataset.from_tensor_slices((x, y)).shuffle(256, seed=1).batch(32)
    cb = tfckpt.CheckpointCallback(str(tmp_path), verbose=0)
    make_model().fit(dataset, epochs=1, verbose=0, callbacks=[cb])
    keras_version("3.6.0")
    with pytest.warns(UserWarning) as caught:
        cb = tfckpt.CheckpointCallback(str(tmp_path), verbose=0)
        make_model().fit(dataset, epochs=2, verbose=0, callbacks=[cb])
    messages = [str(w.message) for w in caught]
    assert any(
        "resuming from ckpt-000001: Keras 3.6.0 reads a tf.data dataset through one iterator" in m
        for m in messages
    ), messages
    assert [r.epoch for r in tfckpt.open(tmp_path).checkpoints] == [1, 2]
