"""ServingExport: a trainer killed in the middle of an export and restarted
leaves TF Serving's layout (at most `keep` numbered versions, nothing else),
the newest being the best checkpoint's step, and TF serves it."""

import os
import re
import signal
import warnings

import numpy as np
import pytest
import tensorflow as tf
from support import make_data, make_model, run_script

import tfckpt


@pytest.mark.parametrize("mode", ["sync", "async"])
def test_serving_export_after_a_kill_in_the_middle_of_an_export(tmp_path, mode):
    run, base = tmp_path / "run", tmp_path / "serving"
    extra = ["--async"] if mode == "async" else []
    killed = run_script("serve_train.py", run, base, *extra, "--kill-in-export", "2")
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    left = [n for n in os.listdir(base) if not n.isdigit()]
    assert left, os.listdir(base)  # the interrupted export's temporary directory
    run_script("serve_train.py", run, base, *extra, "--epochs", "8", check=True)

    names = os.listdir(base)
    assert all(re.fullmatch(r"\d+", n) for n in names), names  # nothing else
    versions = sorted(int(n) for n in names)
    assert 1 <= len(versions) <= 2
    best = tfckpt.open(run).latest.manifest["best"]
    assert versions[-1] == best["step"]

    served = tf.saved_model.load(str(base / str(versions[-1])))
    x = np.random.default_rng(3).normal(size=(4, 16)).astype("float32")
    model = tf.keras.Sequential(
        [
            tf.keras.Input((16,)),
            tf.keras.layers.Dense(16, activation="relu"),
            tf.keras.layers.Dense(1, activation="sigmoid"),
        ]
    )
    tfckpt.restore(model, run, "best")
    np.testing.assert_allclose(served.serve(x).numpy(), model(x).numpy(), rtol=1e-5)
    assert not (run / ".readers").exists() or not os.listdir(run / ".readers")


def test_a_failed_export_is_a_warning_and_the_checkpoint_stays(tmp_path):
    x, y = make_data()
    model = make_model()
    (tmp_path / "serving").write_text("a file where the base directory should be")
    serving = tfckpt.ServingExport(tmp_path / "serving", model=model, when="every")
    cb = tfckpt.CheckpointCallback(tmp_path / "run", observers=[serving])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model.fit(x, y, epochs=2, verbose=0, callbacks=[cb])
    assert any("ServingExport" in str(w.message) for w in caught)
    assert [r.epoch for r in tfckpt.open(tmp_path / "run").checkpoints] == [1, 2]


def test_when_best_without_a_monitor_says_so(tmp_path):
    model = make_model()
    serving = tfckpt.ServingExport(tmp_path / "serving", model=model)
    with tfckpt.CheckpointManager(tmp_path / "run", model, observers=[serving]) as manager:
        with pytest.warns(UserWarning, match=r"when='best'\) needs a monitor.*unaffected"):
            manager.save(1)
    assert tfckpt.open(tmp_path / "run").latest.step == 1


def test_invalid_arguments_are_named(tmp_path):
    model = make_model()
    for kwargs, match in [
        ({"keep": 0}, "keep.*>= 1.*Received: keep=0"),
        ({"when": "always"}, "when.*'best', 'every'.*Received: when='always'"),
    ]:
        with pytest.raises(ValueError, match=match):
            tfckpt.ServingExport(tmp_path, model=model, **kwargs)
    with pytest.raises(ValueError, match="base_dir.*local"):
        tfckpt.ServingExport("gs://bucket/model", model=model)
    with pytest.raises(ValueError, match="model.*Keras model or None"):
        tfckpt.ServingExport(tmp_path, model="not a model")


def test_the_callbacks_model_is_exported_and_other_versions_are_left_alone(tmp_path):
    # base_dir already holds versions this run did not write (an earlier
    # training of the model), one of them higher than any step of this run.
    x, y = make_data()
    base = tmp_path / "serving"
    for old in ("7", "50000"):
        (base / old).mkdir(parents=True)
        (base / old / "saved_model.pb").write_bytes(b"an earlier export")
    model = make_model()
    serving = tfckpt.ServingExport(base, keep=1, when="every")  # the callback's model
    cb = tfckpt.CheckpointCallback(tmp_path / "run", verbose=0, observers=[serving])
    with pytest.warns(UserWarning, match="50000"):
        model.fit(x, y, epochs=3, verbose=0, callbacks=[cb])
    latest = tfckpt.open(tmp_path / "run").latest
    # keep=1 applies to this run's versions; the others are untouched.
    assert sorted(os.listdir(base)) == sorted(["7", "50000", str(latest.step)])
    assert (base / "50000" / "saved_model.pb").read_bytes() == b"an earlier export"
    served = tf.saved_model.load(str(base / str(latest.step)))
    np.testing.assert_allclose(served.serve(x[:4]).numpy(), model(x[:4]).numpy(), rtol=1e-5)
    # The same commit exported again is kept as it is (no moment without it).
    before = os.stat(base / str(latest.step)).st_mtime_ns
    assert serving.export(latest) == str(base / str(latest.step))
    assert os.stat(base / str(latest.step)).st_mtime_ns == before
