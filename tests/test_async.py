"""Asynchronous saving: same checkpoints as synchronous ones, errors surface."""

import gc
import json
import sys
import threading

import keras
import numpy as np
import pytest
import tensorflow as tf
from support import fit, make_model, run_script, small_model
from tensorflow.python.ops import resource_variable_ops

import tfckpt
import tfckpt.fit.session


def tensors(path):
    reader = tf.train.load_checkpoint(path)
    return {
        name: reader.get_tensor(name)
        for name, _ in tf.train.list_variables(path)
        if not name.startswith(("_CHECKPOINTABLE_OBJECT_GRAPH", "save_counter"))
    }


def run(directory, data, async_save):
    model = make_model()
    _, history = fit(model, directory, 3, data, save_freq=2, keep_last=None, async_save=async_save)
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
    cb, history = fit(make_model(seed=5), tmp_path, 4, data, async_save=True)
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


def deep_model(seed=0, layers=30, built=True):
    """Many variables (and their Adam slots), named so a twin has the same paths."""
    keras.utils.set_random_seed(seed)
    return keras.Sequential(
        [keras.Input((64,))] * built
        + [keras.layers.Dense(64, activation="tanh", name=f"d{i}") for i in range(layers)]
        + [keras.layers.Dense(1, name="out")],
        name="net",
    )


def snapshot(model, optimizer):
    return {v.path: v.numpy().copy() for v in model.weights + optimizer.variables}


def assert_holds(record, expected, twin, twin_optimizer):
    """`record`, read back with plain tf.train.Checkpoint, holds exactly `expected`."""
    stored = [
        n
        for n, _ in tf.train.list_variables(record.path)
        if not n.startswith(("_CHECKPOINTABLE_OBJECT_GRAPH", "save_counter"))
    ]
    assert len(stored) == len(expected), record.name
    tf.train.Checkpoint(model=twin, optimizer=twin_optimizer).read(record.path).expect_partial()
    actual = snapshot(twin, twin_optimizer)
    for path, value in expected.items():
        np.testing.assert_array_equal(actual[path], value, err_msg=f"{record.name}: {path}")


def test_async_checkpoints_hold_the_state_at_the_save_call(tmp_path):
    # A custom loop that saves before the first step, when neither the model's
    # weights nor Adam's slots exist yet (both are created by the first step):
    # every checkpoint must still hold the state at its save call, not values
    # read while training went on.
    rng = np.random.default_rng(0)
    x = rng.normal(size=(256, 64)).astype("float32")
    y = rng.normal(size=(256, 1)).astype("float32")
    model, optimizer = deep_model(built=False), keras.optimizers.Adam(1e-2, name="adam")

    @tf.function
    def train_step(xb, yb):
        with tf.GradientTape() as tape:
            loss = tf.reduce_mean((model(xb) - yb) ** 2)
        grads = tape.gradient(loss, model.trainable_variables)
        optimizer.apply_gradients(zip(grads, model.trainable_variables))

    expected = {}
    with tfckpt.CheckpointManager(
        str(tmp_path), model, optimizer, async_save=True, keep_last=None
    ) as manager:
        manager.save(0)
        expected[0] = snapshot(model, optimizer)
        for step in range(1, 41):
            train_step(x[step % 8 * 32 :][:32], y[step % 8 * 32 :][:32])
            if step % 8 == 0:
                manager.save(step)
                expected[step] = snapshot(model, optimizer)
        manager.wait()
        records = manager.checkpoints
    assert [r.step for r in records] == sorted(expected)
    twin, twin_optimizer = deep_model(seed=1), keras.optimizers.Adam(1e-2, name="adam")
    twin_optimizer.build(twin.trainable_variables)
    for record in records:
        assert_holds(record, expected[record.step], twin, twin_optimizer)


def test_async_fit_checkpoints_hold_the_state_at_the_save_call(tmp_path, monkeypatch):
    # The state at each save call, recorded by the manager the callback creates.
    calls = []

    class Recording(tfckpt.CheckpointManager):
        def save(self, step=None, **kwargs):
            calls.append(
                (
                    (step, kwargs.get("epoch", 0), kwargs.get("batch", 0)),
                    snapshot(self.model, self.optimizer),
                )
            )
            return super().save(step, **kwargs)

    monkeypatch.setattr(tfckpt.fit.session, "CheckpointManager", Recording)
    rng = np.random.default_rng(0)
    x = rng.normal(size=(256, 64)).astype("float32")
    y = rng.normal(size=(256, 1)).astype("float32")
    model = deep_model()
    model.compile(keras.optimizers.Adam(1e-2, name="adam"), "mse")
    cb = tfckpt.CheckpointCallback(
        str(tmp_path), monitor=None, save_freq=2, keep_last=None, async_save=True, verbose=0
    )
    model.fit(x, y, batch_size=32, epochs=3, verbose=0, callbacks=[cb])
    records = tfckpt.open(str(tmp_path)).checkpoints
    assert len(records) >= 12
    twin = deep_model(seed=1)
    twin_optimizer = keras.optimizers.Adam(1e-2, name="adam")
    twin_optimizer.build(twin.trainable_variables)
    for record in records:
        point = (record.step, record.epoch, record.batch)
        expected = [state for at, state in calls if at == point][-1]
        assert_holds(record, expected, twin, twin_optimizer)


@pytest.mark.parametrize("mode", ["loop", "fit"])
def test_one_failed_async_write_costs_one_checkpoint(tmp_path, mode):
    # A real EFBIG during one background write: one error naming it, and the
    # next save (limit lifted) is committed whole, with the state at its call.
    proc = run_script("disk_full_once.py", tmp_path / "run", mode, check=True)
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert len(result["errors"]) == 1, result["errors"]
    assert "File too large" in result["errors"][0] and "ckpt-000002" in result["errors"][0]
    assert "Is a directory" not in result["errors"][0]
    assert [c["epoch"] for c in result["checkpoints"]] == [1, 3]
    newest = result["checkpoints"][-1]
    assert {"ckpt.index", "ckpt.data-00000-of-00001"} <= set(newest["files"])
    model = keras.Sequential([keras.Input((256,)), keras.layers.Dense(1024), keras.layers.Dense(1)])
    model.compile(keras.optimizers.Adam(), "mse")
    model.optimizer.build(model.trainable_variables)
    tf.train.Checkpoint(model=model, optimizer=model.optimizer).read(
        newest["path"]
    ).expect_partial()
    for v, value in zip(model.weights + model.optimizer.variables, result["expected"]):
        np.testing.assert_array_equal(v.numpy(), np.asarray(value, dtype=v.dtype), err_msg=v.path)
    assert "Traceback" not in proc.stderr  # no error left for TF to raise at exit


@pytest.mark.skipif(sys.platform != "linux", reason="per-thread nice values are Linux's")
@pytest.mark.parametrize("incremental", [True, False])
def test_background_writes_yield_to_training(tmp_path, incremental, monkeypatch):
    # The threads that write, commit and delete in the background run at a
    # higher nice value; the training (main) thread keeps its own.
    import os
    import threading

    model = make_model()
    main_nice = os.getpriority(os.PRIO_PROCESS, threading.get_native_id())
    seen = {"seal": []}
    real_finish = tfckpt.store.checkpoint_store.CheckpointStore.finish

    def finish(self, *args, **kwargs):
        # The commit thread, and the TF writer thread it waited for.
        seen["commit"] = os.getpriority(os.PRIO_PROCESS, threading.get_native_id())
        seen["writers"] = [
            os.getpriority(os.PRIO_PROCESS, t.native_id)
            for t in threading.enumerate()
            if t is not threading.main_thread() and t.native_id and t.name.startswith("Thread-")
        ]
        seen["seal"] = [
            os.getpriority(os.PRIO_PROCESS, t.native_id)
            for t in threading.enumerate()
            if t.name.startswith("tfckpt-seal")
        ]
        return real_finish(self, *args, **kwargs)

    monkeypatch.setattr(
        tfckpt.store.checkpoint_store.CheckpointStore, "finish", finish
    )  # observes only
    with tfckpt.CheckpointManager(
        tmp_path, model, async_save=True, keep_last=1, incremental=incremental
    ) as manager:
        for epoch in (1, 2, 3):
            manager.save(epoch=epoch)
            manager.wait()
    assert seen["commit"] == 10
    assert 10 in seen["writers"]  # TF's async writer thread
    assert set(seen["seal"]) <= {10}  # (none yet at the first commit)
    assert os.getpriority(os.PRIO_PROCESS, threading.get_native_id()) == main_nice
    assert [r.epoch for r in tfckpt.open(tmp_path).checkpoints] == [3]


def test_async_copies_are_eager_and_hold_the_state_at_each_write(tmp_path):
    # TF's async helper copies the variables with a tf.function from its
    # second write on, whose first call traces every variable (14 s at 6,002
    # variables, blocking fit once); tfckpt copies with eager ops instead.
    # Keras variables, a plain tf.Variable and a lookup table (which has no
    # host copy: TF's own copy skips it too) in one checkpoint.
    from tfckpt.saving import async_fix

    async_fix.enable()
    model = deep_model(layers=2)
    step = tf.Variable(0, dtype=tf.int64)
    table = tf.lookup.experimental.MutableHashTable(tf.int64, tf.int64, default_value=-1)
    checkpoint = tf.train.Checkpoint(model=model, step=step, table=table)
    options = tf.train.CheckpointOptions(experimental_enable_async_checkpoint=True)
    expected = []
    for i in range(3):
        for v in model.weights:
            v.assign(v + 1.0)
        step.assign(i + 10)
        checkpoint.write(str(tmp_path / f"c{i}" / "ckpt"), options=options)
        async_fix.copy_eagerly(checkpoint)
        expected.append([v.numpy().copy() for v in model.weights])
        for v in model.weights:  # changed at once: the write must not see it
            v.assign(v * 0.0 - 7.0)
    checkpoint.sync()
    helper = checkpoint._async_checkpointer_impl
    traced = type(helper).__dict__["_copy_to_cpu"].__get__(helper, type(helper))
    assert traced.experimental_get_tracing_count() == 0
    for i, weights in enumerate(expected):
        twin, twin_step = deep_model(layers=2, seed=1), tf.Variable(0, dtype=tf.int64)
        tf.train.Checkpoint(model=twin, step=twin_step).read(
            str(tmp_path / f"c{i}" / "ckpt")
        ).expect_partial()
        assert int(twin_step.numpy()) == i + 10
        for actual, value in zip(twin.weights, weights):
            np.testing.assert_array_equal(actual.numpy(), value)
    async_fix.retire(checkpoint)


def test_the_first_async_save_fills_host_copies_made_in_the_background(tmp_path, monkeypatch):
    # Making a host copy of each variable was most of the first async save's
    # time (1.0-1.2 s at 6,002 variables): the manager makes them while
    # training starts, in its save thread, and the first save only fills them.
    made_in = []
    init = resource_variable_ops.UninitializedVariable.__init__

    def recording_init(self, *args, **kwargs):
        made_in.append(threading.current_thread().name)
        init(self, *args, **kwargs)

    monkeypatch.setattr(resource_variable_ops.UninitializedVariable, "__init__", recording_init)
    model = small_model(value=1.0)
    keras_variables = len(model.weights) + len(model.optimizer.variables)
    with tfckpt.CheckpointManager(tmp_path, model, keep_last=None, async_save=True) as manager:
        for v in model.weights:
            v.assign(v + 1.0)
        manager.save(1)  # waits for the twins, then fills them
        for v in model.weights:
            v.assign(v + 1.0)
        manager.save(2)
        manager.wait()
    assert sum(name.startswith("tfckpt-save") for name in made_in) == keras_variables
    assert made_in.count("MainThread") == 0
    assert gc.isenabled()  # the holds on Python's collector ended
    saved = {r.step: tensors(r.path) for r in tfckpt.open(str(tmp_path)).checkpoints}
    weights = [k for k in saved[1] if "_trainable_variables/" in k]  # the model's, deduplicated
    assert len(weights) == len(model.weights)
    assert all(np.all(saved[1][k] == 2.0) and np.all(saved[2][k] == 3.0) for k in weights)
