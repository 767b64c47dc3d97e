"""Training state beyond the model and its optimizer: `objects=` on the
manager and the callback, the manager's random state, and its `mode="auto"`."""

import json

import keras
import numpy as np
import pytest
import tensorflow as tf
from support import make_data, make_model, run_script

import tfckpt


def loop(directory, kill_at=-1):
    proc = run_script("custom_loop_objects.py", directory, 20, kill_at)
    if kill_at >= 0:
        assert proc.returncode == -9, proc.stderr[-3000:]
        return None
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_a_custom_loop_with_objects_resumes_bitwise(tmp_path):
    # An EMA model, a step variable and a shuffled, repeated tf.data iterator
    # in `objects`, Dropout in the model; killed two steps after a save.
    reference = loop(tmp_path / "ref")
    loop(tmp_path / "run", kill_at=11)
    latest = tfckpt.open(tmp_path / "run").latest
    assert latest.step == 9
    assert set(latest.manifest["contents"]) >= {"model", "optimizer", "ema", "step", "data"}
    # Each checkpoint stays a plain TF checkpoint, the objects under their names.
    names = {name for name, _ in tf.train.list_variables(latest.path)}
    assert any(n.startswith("ema/") for n in names) and "step/.ATTRIBUTES/VARIABLE_VALUE" in names
    resumed = loop(tmp_path / "run")
    assert resumed == reference


def test_the_manager_saves_and_restores_the_random_state(tmp_path):
    model = make_model()
    with tfckpt.CheckpointManager(tmp_path, model) as manager:
        manager.save(1)
        expected = [np.random.random(), keras.random.uniform(()).numpy()]
    with tfckpt.CheckpointManager(tmp_path, model) as manager:
        np.random.random(), keras.random.uniform(())  # drawn elsewhere meanwhile
        manager.restore()
        assert [np.random.random(), keras.random.uniform(()).numpy()] == expected
    with tfckpt.CheckpointManager(tmp_path, model, restore_random_state=False) as manager:
        manager.restore()
        assert np.random.random() != expected[0]


def test_the_callback_saves_objects_too(tmp_path):
    x, y = make_data()
    model, ema = make_model(), make_model(seed=5)
    counter = tf.Variable(7)
    cb = tfckpt.CheckpointCallback(tmp_path, objects={"ema": ema, "counter": counter}, verbose=0)
    model.fit(x, y, epochs=1, verbose=0, callbacks=[cb])
    saved = [w.copy() for w in ema.get_weights()]
    fresh_ema, fresh_counter = make_model(seed=9), tf.Variable(0)
    model2 = make_model(seed=3)
    cb = tfckpt.CheckpointCallback(
        tmp_path, objects={"ema": fresh_ema, "counter": fresh_counter}, verbose=0
    )
    model2.fit(x, y, epochs=1, verbose=0, callbacks=[cb])  # restores, nothing left to train
    assert int(fresh_counter) == 7
    for a, b in zip(fresh_ema.get_weights(), saved):
        np.testing.assert_array_equal(a, b)


def test_mode_auto_is_the_managers_default(tmp_path):
    model = make_model()
    with tfckpt.CheckpointManager(tmp_path / "a", model, monitor="val_accuracy") as manager:
        assert manager.mode == "max"
        manager.save(1, metrics={"val_accuracy": 0.5})
        manager.save(2, metrics={"val_accuracy": 0.4})
    assert tfckpt.open(tmp_path / "a").best.step == 1
    with tfckpt.CheckpointManager(tmp_path / "b", model, monitor="val_loss") as manager:
        assert manager.mode == "min"
    with pytest.raises(ValueError, match="monitor='my_score'.*mode='min' or mode='max'"):
        tfckpt.CheckpointManager(tmp_path / "c", model, monitor="my_score")
    with pytest.raises(ValueError, match=r"`mode` must be one of \('auto', 'min', 'max'\)"):
        tfckpt.CheckpointManager(tmp_path / "c", model, monitor="loss", mode="up")


@pytest.mark.parametrize(
    "objects, message",
    [
        ([1, 2], "`objects` must be a dict of name -> trackable"),
        ({"model": tf.Variable(1)}, "keys must be Python identifiers other than 'model'"),
        ({"my-ema": tf.Variable(1)}, "Received: key 'my-ema'"),
        ({"lr": 0.1}, r"`objects\['lr'\]` must be something tf.train.Checkpoint saves.*float"),
    ],
)
def test_bad_objects_are_refused_clearly(tmp_path, objects, message):
    with pytest.raises(ValueError, match=message):
        tfckpt.CheckpointManager(tmp_path, make_model(), objects=objects)
    with pytest.raises(ValueError, match=message):
        tfckpt.CheckpointCallback(tmp_path, objects=objects)


def test_an_iterator_is_refused_with_async_saves(tmp_path):
    it = iter(tf.data.Dataset.range(4))
    with pytest.raises(ValueError, match="tf.data iterator need async_save=False"):
        tfckpt.CheckpointManager(tmp_path, make_model(), objects={"data": it}, async_save=True)
