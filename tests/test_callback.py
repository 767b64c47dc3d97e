"""CheckpointCallback with real model.fit, real files and real processes."""

import json
import signal
import warnings

import keras
import numpy as np
import pytest
import tensorflow as tf
from support import all_variables, assert_same_variables, fit, make_model, run_script, start_script

import tfckpt


def test_kill_9_and_rerun_continues_where_it_stopped(tmp_path):
    d = tmp_path / "run"
    first = run_script("train.py", d, "--epochs", 6, "--kill-at-epoch", 3)
    assert first.returncode == -signal.SIGKILL, first.stderr
    run = tfckpt.open(str(d))
    killed_at = run.latest
    assert killed_at.epoch == 3

    second = run_script("train.py", d, "--epochs", 6, check=True)
    result = json.loads(second.stdout.strip().splitlines()[-1])
    assert result["restored"] == killed_at.name
    assert result["epochs_run"] == [3, 4, 5]  # only the remaining epochs

    run = tfckpt.open(str(d))
    records = run.checkpoints
    assert records[-1].epoch == 6
    # Retention (keep_last=2, keep_best=1) held across both processes.
    assert len(records) <= 3
    assert [r for r in records if r.kept is None] == []
    # The best record spans both processes: the history of all 6 epochs is on disk.
    history = run.state(records[-1])["history"]
    assert [h["epoch"] for h in history] == [1, 2, 3, 4, 5, 6]
    best_value = min(h["val_loss"] for h in history)
    assert records[-1].manifest["best"]["value"] == pytest.approx(best_value)
    assert run.best.metrics["val_loss"] == pytest.approx(best_value)
    # Plain TF agrees on the newest checkpoint and can read it.
    assert tf.train.latest_checkpoint(str(d)) == run.latest.path
    model = make_model(features=16, units=32)
    tf.train.Checkpoint(model=model, optimizer=model.optimizer).read(
        run.latest.path
    ).assert_existing_objects_matched()
    assert int(model.optimizer.iterations) == result["iterations"]
    assert sum(float(np.sum(w)) for w in model.get_weights()) == pytest.approx(
        result["weights_sum"], rel=1e-6
    )

    # Rerunning a finished script trains nothing more.
    third = run_script("train.py", d, "--epochs", 6, check=True)
    assert json.loads(third.stdout.strip().splitlines()[-1])["epochs_run"] == []


def test_resume_in_new_model_restores_everything(tmp_path, data):
    a = make_model()
    fit(a, tmp_path, 3, data)
    saved = all_variables(a)

    b = make_model(seed=5)  # different initial weights
    cb, history = fit(b, tmp_path, 3, data)
    assert history.epoch == []  # all 3 epochs were already done
    assert cb.restored.epoch == 3
    assert_same_variables(all_variables(b), saved)
    assert b._initial_epoch is None


def test_resumed_run_equals_uninterrupted_run(tmp_path, data):
    # A model without random layers resumes bitwise exactly at epoch boundaries.
    ref = make_model()
    fit(ref, tmp_path / "ref", 4, data)

    a = make_model()
    fit(a, tmp_path / "run", 2, data)
    b = make_model()  # the rerun script seeds as the first run did
    _, history = fit(b, tmp_path / "run", 4, data)
    assert history.epoch == [2, 3]
    assert_same_variables(all_variables(b), all_variables(ref))


def test_second_fit_in_same_process_trains_on(tmp_path, data):
    model = make_model()
    cb, h1 = fit(model, tmp_path, 2, data)
    assert h1.epoch == [0, 1]
    step = int(model.optimizer.iterations)
    h2 = model.fit(*data, validation_split=0.25, epochs=2, batch_size=32, verbose=0, callbacks=[cb])
    assert h2.epoch == [0, 1]  # Keras semantics: two more epochs
    assert int(model.optimizer.iterations) == 2 * step
    assert model._initial_epoch is None
    run = tfckpt.open(str(tmp_path))
    assert run.latest.epoch == 4  # the directory's epoch counter carries on
    assert [h["epoch"] for h in run.state(run.latest)["history"]] == [1, 2, 3, 4]
    # And a plain fit afterwards (no callback) is not affected by any resume.
    h3 = model.fit(*data, epochs=1, verbose=0)
    assert h3.epoch == [0]


def test_restore_best_step_and_false(tmp_path, data):
    model = make_model()
    fit(model, tmp_path, 4, data, keep_last=None, monitor="val_accuracy")
    run = tfckpt.open(str(tmp_path))
    assert len(run.checkpoints) == 4
    best = run.best
    assert best.metrics["val_accuracy"] == max(c.metrics["val_accuracy"] for c in run.checkpoints)

    m = make_model(seed=3)
    cb, _ = fit(m, tmp_path, 4, data, restore="best", keep_last=None, monitor="val_accuracy")
    assert cb.restored.name == best.name

    second = run.checkpoints[1]
    m = make_model(seed=3)
    cb, _ = fit(m, tmp_path, 0, data, restore=second.step, keep_last=None)
    assert cb.restored.step == second.step
    ref = make_model(seed=4)
    tfckpt.restore(ref, str(tmp_path), which=second.step)
    assert_same_variables(
        {i: v.numpy() for i, v in enumerate(m.weights)},
        {i: v.numpy() for i, v in enumerate(ref.weights)},
    )

    m = make_model(seed=3)
    initial = all_variables(m)
    with pytest.warns(UserWarning, match="restore=False"):
        cb, history = fit(m, tmp_path, 1, data, restore=False, keep_last=None)
    assert cb.restored is None and history.epoch == [0]
    assert not np.array_equal(all_variables(m)["model/0/kernel"], initial["model/0/kernel"])


def test_step_level_saves_with_best_tracking_and_steps_per_execution(tmp_path, data):
    x, y = data  # 192 training samples / 32 = 6 batches per epoch
    model = make_model()
    model.compile(
        keras.optimizers.Adam(1e-2),
        "binary_crossentropy",
        metrics=["accuracy"],
        steps_per_execution=2,
    )
    cb, _ = fit(model, tmp_path, 3, data, save_freq=5, keep_last=None)
    records = tfckpt.open(str(tmp_path)).checkpoints
    step_saves = [(r.epoch, r.batch) for r in records if r.batch]
    # Every 5 batches counted across epochs, at the execution boundary reached first.
    # 6 batches per epoch run 2 at a time: totals 2, 4, 6 | 8, 10, 12 | 14, 16, 18.
    # A save due on an epoch's last batch is the epoch-end save (epoch 1, batch 0).
    assert step_saves == [(1, 4), (2, 4)]
    epoch_saves = [r for r in records if r.batch == 0]
    assert [r.epoch for r in epoch_saves] == [1, 2, 3]
    assert all("val_loss" in r.metrics for r in epoch_saves)
    assert all("val_loss" not in r.metrics and "loss" in r.metrics for r in records if r.batch)


def test_monitor_typo_names_existing_metrics(tmp_path, data):
    model = make_model()
    with pytest.raises(
        ValueError, match=r"monitor='val_los'.*\['accuracy', 'loss', 'val_accuracy', 'val_loss'\]"
    ):
        fit(model, tmp_path, 1, data, monitor="val_los", mode="min")
    with pytest.raises(ValueError, match="monitor='acuracy'"):
        fit(make_model(), tmp_path / "b", 1, data, monitor="acuracy", mode="max")


def test_missing_validation_warns_once_and_records_no_metric(tmp_path, data):
    model = make_model()
    x, y = data
    cb = tfckpt.CheckpointCallback(str(tmp_path), verbose=0)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model.fit(
            x,
            y,
            validation_data=(x[:32], y[:32]),
            validation_freq=2,
            epochs=4,
            verbose=0,
            callbacks=[cb],
        )
    ours = [w for w in caught if "no validation ran" in str(w.message)]
    assert len(ours) == 1
    records = tfckpt.open(str(tmp_path)).checkpoints
    by_epoch = {r.epoch: r for r in records}
    assert "val_loss" in by_epoch[4].metrics and "val_loss" not in by_epoch[3].metrics


def test_mode_auto(tmp_path, data):
    for monitor, mode in [("val_loss", "min"), ("val_accuracy", "max"), ("loss", "min")]:
        model = make_model()
        cb, _ = fit(model, tmp_path / monitor, 1, data, monitor=monitor)
        assert tfckpt.open(str(tmp_path / monitor)).monitor == (monitor, mode)
    with pytest.raises(ValueError, match="mode='min' or mode='max'"):
        fit(make_model(), tmp_path / "x", 1, data, monitor="val_something")


def test_subclassed_model_resumes(tmp_path, data):
    class Net(keras.Model):
        def __init__(self):
            super().__init__()
            self.a = keras.layers.Dense(8, activation="relu")
            self.b = keras.layers.Dense(1, activation="sigmoid")

        def call(self, x):
            return self.b(self.a(x))

    def make():
        keras.utils.set_random_seed(0)
        m = Net()
        m.compile(keras.optimizers.Adam(1e-2), "binary_crossentropy")
        return m

    a = make()
    fit(a, tmp_path, 2, data)
    b = make()  # never called: fit builds it only when tracing, after on_train_begin
    cb, history = fit(b, tmp_path, 3, data)
    assert cb.restored.epoch == 2 and history.epoch == [2]
    assert int(b.optimizer.iterations) == 3 * int(a.optimizer.iterations) // 2


def test_different_architecture_fails_naming_variables(tmp_path, data):
    fit(make_model(units=16), tmp_path, 1, data)
    before = sorted(p.name for p in tmp_path.iterdir())
    with pytest.raises(tfckpt.IncompatibleCheckpointError, match="does not match"):
        fit(make_model(units=24), tmp_path, 2, data)
    other = keras.Sequential(
        [keras.Input((8,)), keras.layers.Dense(16), keras.layers.Dense(1), keras.layers.Dense(1)]
    )
    other.compile("adam", "mse")
    with pytest.raises(
        tfckpt.IncompatibleCheckpointError, match=r"not bound to checkpointed values.*dense"
    ):
        fit(other, tmp_path, 2, data)
    assert sorted(p.name for p in tmp_path.iterdir()) == before  # nothing lost


def test_nonfinite_loss_is_not_saved(tmp_path, data):
    model = make_model()
    fit(model, tmp_path, 1, data)
    x, y = data
    # A NaN label makes the loss NaN whatever the CPU: a NaN input may not, since
    # oneDNN's fused MatMul+BiasAdd+ReLU maps it to a finite value on some CPUs.
    bad = y.copy()
    bad[0] = np.nan
    with pytest.warns(UserWarning, match="not saving a checkpoint of a diverged model"):
        fit(model, tmp_path, 1, (x, bad), callbacks=[keras.callbacks.TerminateOnNaN()])
    assert [r.epoch for r in tfckpt.open(str(tmp_path)).checkpoints] == [1]


def test_inference_restore_into_unbuilt_model(tmp_path, data):
    model = make_model()
    fit(model, tmp_path, 2, data)
    plain = keras.Sequential(
        [keras.layers.Dense(16, activation="relu"), keras.layers.Dense(1, activation="sigmoid")]
    )  # no Input: unbuilt
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no "unused optimizer value" warnings
        record = tfckpt.restore(plain, str(tmp_path))
    assert record.epoch == 2
    np.testing.assert_allclose(
        plain.predict(data[0][:8], verbose=0), model.predict(data[0][:8], verbose=0), rtol=1e-6
    )


def test_recompiled_model_trains_on_instead_of_restoring(tmp_path, data):
    model = make_model()
    cb, _ = fit(model, tmp_path, 2, data)
    trained = [w.numpy() for w in model.weights]
    # Fine-tuning in a notebook: freeze a layer, recompile (a new optimizer at step 0).
    model.layers[0].trainable = False
    model.compile(keras.optimizers.Adam(1e-5), "binary_crossentropy", metrics=["accuracy"])
    cb2, history = fit(model, tmp_path, 2, data)
    assert cb2.restored is None and history.epoch == [0, 1]
    np.testing.assert_array_equal(model.weights[0].numpy(), trained[0])  # frozen, not restored
    assert float(model.optimizer.learning_rate) == pytest.approx(1e-5)
    assert tfckpt.open(str(tmp_path)).latest.epoch == 4


def test_early_stopping_with_ema_saves_the_trained_weights(tmp_path, data):
    # EarlyStopping (listed after us) stops the run: the last epoch's save is
    # committed before fit swaps the EMA averages into the weights.
    snapshots = {}

    def snap(epoch, logs):
        snapshots[epoch] = [v.numpy() for v in model.weights]

    model = make_model(optimizer=keras.optimizers.SGD(0.1, use_ema=True, ema_momentum=0.5))
    stop = keras.callbacks.EarlyStopping("loss", patience=0, min_delta=100.0)
    fit(
        model,
        tmp_path,
        10,
        data,
        callbacks=[stop, keras.callbacks.LambdaCallback(on_epoch_end=snap)],
    )
    record = tfckpt.open(str(tmp_path)).latest
    assert record.epoch == 2 and model.stop_training
    fresh = make_model(seed=3)
    tfckpt.restore(fresh, str(tmp_path))
    for a, b in zip(fresh.weights, snapshots[1]):
        np.testing.assert_array_equal(a.numpy(), b)


def test_nan_validation_metric_does_not_break_logging(tmp_path, data):
    x, y = data
    yv = y[:16].copy()
    yv[0] = np.nan  # a NaN label, not input: see test_nonfinite_loss_is_not_saved
    model = make_model()
    cb = tfckpt.CheckpointCallback(str(tmp_path), verbose=1)
    model.fit(x, y, validation_data=(x[:16], yv), epochs=2, verbose=0, callbacks=[cb])
    records = tfckpt.open(str(tmp_path)).checkpoints
    assert [r.metrics["val_loss"] for r in records] == [None, None]


def test_a_fit_that_raises_does_not_keep_the_directory_locked(tmp_path, data):
    model = make_model()

    class Boom(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            raise KeyboardInterrupt

    cb = tfckpt.CheckpointCallback(str(tmp_path), verbose=0)
    with pytest.raises(KeyboardInterrupt):
        model.fit(*data, validation_split=0.25, epochs=3, verbose=0, callbacks=[cb, Boom()])
    model.fit(*data, validation_split=0.25, epochs=1, verbose=0, callbacks=[cb])
    # Nothing of this process holds the lock now: another process may take it.
    holder = start_script("hold_lock.py", tmp_path)
    try:
        line = holder.stdout.readline()
        assert line.startswith("locked"), holder.stderr.read() if not line else line
    finally:
        holder.kill()
        holder.wait()


def test_user_callback_state_travels_with_the_checkpoint(tmp_path, data):
    class Counter(keras.callbacks.Callback):
        def __init__(self):
            super().__init__()
            self.batches = 0
            self.table = np.zeros(3)

        def on_train_batch_end(self, batch, logs=None):
            self.batches += 1
            self.table += 1

        def get_checkpoint_state(self):
            return {"batches": self.batches, "table": self.table}

        def set_checkpoint_state(self, state):
            self.batches = state["batches"]
            self.table = state["table"]

    first = Counter()
    assert isinstance(first, tfckpt.StatefulCallback)
    fit(make_model(), tmp_path, 2, data, callbacks=[first])
    second = Counter()
    fit(make_model(seed=4), tmp_path, 3, data, callbacks=[second])
    assert second.batches == first.batches * 3 // 2  # 2 epochs restored + 1 trained
    np.testing.assert_array_equal(second.table, np.full(3, second.batches))
