"""Asynchronous saving: same checkpoints as synchronous ones, errors surface."""

import json

import keras
import numpy as np
import pytest
import tensorflow as tf
from conftest import make_model, run_script

import tfckpt


def tensors(path):
    reader = tf.train.load_checkpoint(path)
    return {name: reader.get_tensor(name) for name, _ in tf.train.list_variables(path)
            if not name.startswith(("_CHECKPOINTABLE_OBJECT_GRAPH", "save_counter"))}


def run(directory, data, async_save):
    model = make_model()
    cb = tfckpt.CheckpointCallback(str(directory), save_freq=2, keep_last=None, verbose=0,
                                   async_save=async_save)
    history = model.fit(*data, validation_split=0.25, epochs=3, batch_size=32, verbose=0,
                        callbacks=[cb])
    return model, history


def test_async_checkpoints_equal_sync_ones(tmp_path, data):
    sync_model, _ = run(tmp_path / "sync", data, async_save=False)
    async_model, _ = run(tmp_path / "async", data, async_save=True)
    sync_run, async_run = tfckpt.open(str(tmp_path / "sync")), tfckpt.open(str(tmp_path / "async"))
    assert len(sync_run.checkpoints) == len(async_run.checkpoints) >= 9
    for a, b in zip(sync_run.checkpoints, async_run.checkpoints):
        assert (a.step, a.epoch, a.batch, a.metrics) == (b.step, b.epoch, b.batch, b.metrics)
        ta, tb = tensors(a.path), tensors(b.path)
        assert ta.keys() == tb.keys()
        for name in ta:
            np.testing.assert_array_equal(ta[name], tb[name], err_msg=name)
        assert sorted(a.manifest["files"]) == sorted(b.manifest["files"])
    assert all(problem is None for _, problem in tfckpt.verify(str(tmp_path / "async")))
    # Committed before fit returned; the model trained on while saves were written.
    for a, b in zip(sync_model.weights, async_model.weights):
        np.testing.assert_array_equal(a.numpy(), b.numpy())


def test_async_resume(tmp_path, data):
    run(tmp_path, data, async_save=True)
    model = make_model(seed=5)
    cb = tfckpt.CheckpointCallback(str(tmp_path), async_save=True, verbose=0)
    history = model.fit(*data, validation_split=0.25, epochs=4, batch_size=32, verbose=0,
                        callbacks=[cb])
    assert cb.restored.epoch == 3 and history.epoch == [3]


def test_manager_async_wait_returns_the_committed_record(tmp_path):
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(2)])
    with tfckpt.CheckpointManager(str(tmp_path), model, async_save=True) as manager:
        assert manager.save(5, epoch=1) is None
        record = manager.wait()
        assert record.step == 5 and manager.latest.name == record.name
        assert manager.wait() is None


@pytest.mark.parametrize("mode", ["raise", "warn"])
def test_async_write_error_surfaces(tmp_path, mode):
    proc = run_script("disk_full.py", tmp_path / "run", mode, "--async", check=True)
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    if mode == "raise":
        assert "File too large" in result["error"] or "No partial checkpoint" in result["error"]
        assert "earlier checkpoints are intact" in result["error"]
    else:
        assert result["epochs_run"] == [0, 1, 2]
        assert "Training goes on (on_save_error='warn')" in proc.stderr
    assert [r.name for r in tfckpt.open(str(tmp_path / "run")).checkpoints] == ["ckpt-000001"]


def test_async_checkpoint_is_plain_tensorflow(tmp_path, data):
    model, _ = run(tmp_path, data, async_save=True)
    fresh = make_model(seed=2)
    fresh.optimizer.build(fresh.trainable_variables)
    path = tf.train.latest_checkpoint(str(tmp_path))
    tf.train.Checkpoint(model=fresh, optimizer=fresh.optimizer).restore(path).assert_consumed()
    for a, b in zip(model.weights, fresh.weights):
        np.testing.assert_array_equal(a.numpy(), b.numpy())
