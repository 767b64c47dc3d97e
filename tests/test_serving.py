"""ServingExport: a trainer killed in the middle of an export and restarted
leaves TF Serving's layout (at most `keep` numbered versions, nothing else),
the newest being the best checkpoint's step, and TF serves it."""

import json
import os
import re
import signal
import warnings

import numpy as np
import pytest
import tensorflow as tf
from support import make_data, make_model, run_script

import tfckpt
from tfckpt.serve.serving_export import MARKER


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


def test_versions_this_run_did_not_export_are_never_replaced(tmp_path):
    # At steps this run exports: a version made by hand (no marker) and one
    # another run exported.
    base, run = tmp_path / "serving", tmp_path / "run"
    (base / "20").mkdir(parents=True)
    (base / "20" / "saved_model.pb").write_bytes(b"made by hand")
    (base / "30").mkdir()
    (base / "30" / "saved_model.pb").write_bytes(b"another run's")
    other = {"run": str(tmp_path / "other-run"), "checkpoint": "ckpt-000003", "step": 30}
    (base / "30" / MARKER).write_text(json.dumps(other))
    model = make_model()
    model.fit(*make_data(), epochs=1, verbose=0)
    serving = tfckpt.ServingExport(base, model=model, keep=5, when="every")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with tfckpt.CheckpointManager(run, model, keep_last=None, observers=[serving]) as manager:
            for step in (10, 20, 30):
                manager.save(step, epoch=step // 10)
    skipped = [str(w.message) for w in caught if "did not export" in str(w.message)]
    assert len(skipped) == 2, [str(w.message) for w in caught]
    assert "ckpt-000002" in skipped[0] and str(base / "20") in skipped[0]
    assert "without a .tfckpt-export.json marker" in skipped[0]
    assert "ckpt-000003" in skipped[1] and str(base / "30") in skipped[1]
    assert "another run" in skipped[1] and str(tmp_path / "other-run") in skipped[1]
    assert (base / "20" / "saved_model.pb").read_bytes() == b"made by hand"
    assert sorted(os.listdir(base / "20")) == ["saved_model.pb"]
    assert (base / "30" / "saved_model.pb").read_bytes() == b"another run's"
    assert json.loads((base / "30" / MARKER).read_text()) == other
    assert serving.exported == [10]
    assert sorted(os.listdir(base)) == ["10", "20", "30"]
    # This run's own version of a step is replaced by a newer checkpoint at
    # that step (the run restarted from an older one).
    with tfckpt.CheckpointManager(run, model, keep_last=None, observers=[serving]) as manager:
        manager.save(10, epoch=1)
    assert json.loads((base / "10" / MARKER).read_text())["checkpoint"] == "ckpt-000004"
    assert sorted(os.listdir(base)) == ["10", "20", "30"]


def test_a_checkpoint_saved_before_the_optimizer_had_slots_exports(tmp_path):
    # The export's model is compiled with a built optimizer; the checkpoint's
    # was not built yet (a save before the first step). Only weights matter.
    with tfckpt.CheckpointManager(tmp_path / "run", make_model()) as manager:
        record = manager.save(0)
    export = tfckpt.ServingExport(tmp_path / "serving", when="every")
    trained = make_model()
    trained.optimizer.build(trained.trainable_variables)
    export.set_model(trained)
    assert export.export(record, run=str(tmp_path / "run")) == str(tmp_path / "serving" / "0")
