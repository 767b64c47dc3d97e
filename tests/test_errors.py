"""Bad input gets a clear error, at construction or before training time is spent."""

import keras
import pytest
from support import architecture, make_model, run_script

import tfckpt


@pytest.mark.parametrize(
    "kwargs, error, message",
    [
        (
            {"mode": "maximize"},
            ValueError,
            r"`mode` must be one of \('auto', 'min', 'max'\). Received: mode='maximize'",
        ),
        (
            {"save_freq": 0},
            ValueError,
            r"`save_freq` must be 'epoch' or a positive integer.*save_freq=0",
        ),
        ({"save_freq": -5}, ValueError, r"Received: save_freq=-5"),
        ({"save_freq": "batch"}, ValueError, r"Received: save_freq='batch'"),
        ({"save_freq": 2.5}, ValueError, r"Received: save_freq=2.5"),
        (
            {"monitor": None, "keep_best": 2},
            ValueError,
            r"`keep_best=2` needs a metric.*monitor=None",
        ),
        (
            {"keep_last": -1},
            ValueError,
            r"`keep_last` must be an integer >= 0, or None.*keep_last=-1",
        ),
        ({"keep_best": -1}, ValueError, r"`keep_best` must be an integer >= 0.*keep_best=-1"),
        ({"keep_every_n_epochs": 0}, ValueError, r"`keep_every_n_epochs` must be an integer >= 1"),
        ({"keep_every_n_hours": -2}, ValueError, r"`keep_every_n_hours` must be a positive number"),
        (
            {"restore": "newest"},
            ValueError,
            r"`restore` must be 'latest', 'best', a step \(int >= 0\) or False.*'newest'",
        ),
        ({"restore": True}, ValueError, r"Received: restore=True"),
        ({"verbose": 2}, ValueError, r"`verbose` must be 0 or 1"),
        ({"retention": 3}, TypeError, r"`retention` must be a tfckpt.retention.RetentionPolicy"),
        ({"on_save_error": "ignore"}, ValueError, r"`on_save_error` must be 'raise' or 'warn'"),
        ({"monitor": ""}, ValueError, r"`monitor` must be a metric name"),
    ],
)
def test_invalid_arguments(tmp_path, kwargs, error, message):
    with pytest.raises(error, match=message):
        tfckpt.CheckpointCallback(str(tmp_path), **kwargs)


def test_defaults_with_monitor_none_just_turn_best_tracking_off(tmp_path, data):
    model = make_model()
    cb = tfckpt.CheckpointCallback(str(tmp_path), monitor=None, verbose=0)
    model.fit(*data, epochs=2, verbose=0, callbacks=[cb])
    run = tfckpt.open(str(tmp_path))
    assert run.best is None and run.monitor is None and len(run.checkpoints) == 2
    with pytest.raises(ValueError, match="tracks no metric"):
        tfckpt.restore(make_model(), str(tmp_path), which="best")


def test_directory_that_is_a_file(tmp_path):
    f = tmp_path / "weights.h5"
    f.write_bytes(b"precious")
    with pytest.raises(ValueError, match="is an existing file"):
        tfckpt.CheckpointCallback(str(f))
    with pytest.raises(TypeError, match="`directory` must be a non-empty path"):
        tfckpt.CheckpointCallback(None)
    assert f.read_bytes() == b"precious"


def test_unwritable_directory_fails_before_training(tmp_path, data):
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    batches = []
    counter = keras.callbacks.LambdaCallback(on_train_batch_end=lambda b, logs: batches.append(b))
    cb = tfckpt.CheckpointCallback(str(blocker / "run"), verbose=0)
    with pytest.raises(tfckpt.CheckpointError, match="Cannot write checkpoints to"):
        make_model().fit(*data, epochs=1, verbose=0, callbacks=[cb, counter])
    assert batches == []  # no training time was spent


def test_other_keras_backend_is_refused(tmp_path, monkeypatch):
    # Keras picks its backend once per process, and the other backends need
    # packages this project does not install (the numpy backend imports jax),
    # so the backend query is what gets switched here.
    monkeypatch.setattr(keras.backend, "backend", lambda: "jax")
    with pytest.raises(
        RuntimeError,
        match="tfckpt needs Keras's TensorFlow backend, but Keras "
        "is using 'jax'. Set the environment variable KERAS_BACKEND=tensorflow",
    ):
        tfckpt.CheckpointCallback(str(tmp_path))
    with pytest.raises(RuntimeError, match="KERAS_BACKEND=tensorflow"):
        tfckpt.CheckpointManager(str(tmp_path), None)


def test_manager_arguments(tmp_path):
    model = make_model()
    with pytest.raises(ValueError, match=r"`mode` must be one of \('auto', 'min', 'max'\)"):
        tfckpt.CheckpointManager(str(tmp_path), model, monitor="loss", mode="minimum")
    with pytest.raises(TypeError, match="`retention` must be a tfckpt.retention.RetentionPolicy"):
        tfckpt.CheckpointManager(str(tmp_path), model, retention=[1])
    with tfckpt.CheckpointManager(str(tmp_path), model) as manager:
        assert manager.restore() is None  # empty directory: nothing to restore
        with pytest.raises(ValueError, match="No checkpoint matches which=7.*Available: none"):
            manager.restore(7)
        with pytest.raises(TypeError, match="`which` must be 'latest', 'best', a step"):
            manager.restore(1.5)


def test_unknown_selection_lists_what_exists(tmp_path, data):
    model = make_model()
    cb = tfckpt.CheckpointCallback(str(tmp_path), verbose=0)
    model.fit(*data, validation_split=0.25, epochs=2, verbose=0, callbacks=[cb])
    with pytest.raises(
        ValueError, match=r"which=999.*Available: ckpt-000001 \(step 6\), ckpt-000002 \(step 12\)"
    ):
        tfckpt.restore(make_model(), str(tmp_path), which=999)


def test_restore_from_missing_directory(tmp_path):
    with pytest.raises(FileNotFoundError, match="No checkpoint directory"):
        tfckpt.open(str(tmp_path / "nope"))
    proc = run_script("../../tfckpt/cli.py", "ls", tmp_path / "nope")
    assert proc.returncode == 2 and "No checkpoint directory" in proc.stderr


def test_misspelt_monitor_with_auto_mode_names_the_metrics_that_exist(tmp_path, data):
    model = make_model()
    cb = tfckpt.CheckpointCallback(str(tmp_path), monitor="val_los", verbose=0)
    with pytest.raises(
        ValueError,
        match=r"monitor='val_los' is not a metric this model logs\. "
        r"It logs: loss, accuracy",
    ):
        model.fit(*data, validation_split=0.25, epochs=1, verbose=0, callbacks=[cb])
    assert not any(tmp_path.glob("ckpt-*"))


def test_misspelt_monitor_of_a_model_compiled_with_a_loss_alone(tmp_path, data):
    # compile("adam", "mse"): no metrics, the commonest case. The mistake is the
    # name, not the direction: say so, and list what the model logs.
    model = architecture()
    model.compile("adam", "mse")
    cb = tfckpt.CheckpointCallback(str(tmp_path), monitor="val_los", verbose=0)
    with pytest.raises(ValueError) as raised:
        model.fit(*data, validation_split=0.25, epochs=1, verbose=0, callbacks=[cb])
    message = str(raised.value)
    assert "monitor='val_los' is not a metric this model logs. It logs: loss, val_loss" in message
    assert "minimized or maximized" not in message
    assert not any(tmp_path.glob("ckpt-*"))
