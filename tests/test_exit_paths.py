"""Every way out of `fit`: an exception, Ctrl-C, a preemption that returns.

What tfckpt installed for a fit (signal handlers, the directory lock, the
save thread, wrappers on the model) is put back before the exception reaches
the user, and the next `fit` resumes the interrupted run: Keras's own
`BackupAndRestore` scenarios (keras/src/callbacks/backup_and_restore_test.py)
with `tfckpt.CheckpointCallback` in its place.
"""

import gc
import json
import signal
import subprocess
import sys
import threading

import keras
import numpy as np
import pytest
import tensorflow as tf
from support import make_model, run_script, script_env

import tfckpt
from tfckpt.store.lock import DirectoryLock

# 10 samples, batch_size=4: 3 batches per epoch.
X = np.ones((10, 10), "float32")
Y = np.zeros((10, 1), "float32")


class Canary(keras.layers.Layer):
    """Counts the training batches the model ran (a variable: it is checkpointed)."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.counter = self.add_weight(
            shape=(), initializer="zeros", dtype="float32", trainable=False
        )

    def call(self, x, training=False):
        if training:
            self.counter.assign_add(1.0)
        return x


def canary_model():
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((10,)), Canary(), keras.layers.Dense(1)])
    model.compile("sgd", "mse")
    return model


def batches(model):
    return int(model.layers[0].counter.numpy())


class Interrupt(keras.callbacks.Callback):
    """Raises after the `at_batch`-th training batch or at the end of epoch
    number `at_epoch` (1-based), as Keras's InterruptingCallback does."""

    def __init__(self, at_batch=None, at_epoch=None, error=RuntimeError):
        super().__init__()
        self.at_batch, self.at_epoch, self.error = at_batch, at_epoch, error
        self.seen = 0

    def on_train_batch_end(self, batch, logs=None):
        self.seen += 1
        if self.seen == self.at_batch:
            raise self.error("interrupted")

    def on_epoch_end(self, epoch, logs=None):
        if epoch + 1 == self.at_epoch:
            raise self.error("interrupted")


def interrupted_fit(model, directory, save_freq, **interrupt):
    cb = tfckpt.CheckpointCallback(
        str(directory), monitor=None, save_freq=save_freq, keep_last=None, verbose=0
    )
    with pytest.raises(RuntimeError, match="interrupted"):
        model.fit(
            X,
            Y,
            batch_size=4,
            epochs=5,
            verbose=0,
            shuffle=False,
            callbacks=[cb, Interrupt(**interrupt)],
        )
    return cb


def rerun(model, cb):
    return model.fit(X, Y, batch_size=4, epochs=5, verbose=0, shuffle=False, callbacks=[cb])


def corrupt_newest(directory):
    newest = tfckpt.open(str(directory)).latest
    path = directory / newest.name / "ckpt.data-00000-of-00001"
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    return newest


@pytest.mark.parametrize("same_kernel", [True, False], ids=["same-kernel", "new-model"])
def test_interrupted_after_batch_2_resumes_mid_epoch(tmp_path, same_kernel):
    model = canary_model()
    cb = interrupted_fit(model, tmp_path, save_freq=1, at_batch=2)
    assert batches(model) == 2
    if not same_kernel:  # what a new process has: a fresh model and callback
        model = canary_model()
        cb = tfckpt.CheckpointCallback(
            str(tmp_path), monitor=None, save_freq=1, keep_last=None, verbose=0
        )
    history = rerun(model, cb)
    assert history.epoch == [0, 1, 2, 3, 4]  # epoch 0 resumes after its batch 2
    assert batches(model) == 15
    assert tfckpt.open(str(tmp_path)).latest.epoch == 5


@pytest.mark.parametrize("same_kernel", [True, False], ids=["same-kernel", "new-model"])
def test_interrupted_at_the_end_of_epoch_2_resumes_at_epoch_2(tmp_path, same_kernel):
    model = canary_model()
    cb = interrupted_fit(model, tmp_path, save_freq="epoch", at_epoch=2)
    # The epoch was durable before the later callback raised.
    assert tfckpt.open(str(tmp_path)).latest.epoch == 2
    if not same_kernel:
        model = canary_model()
        cb = tfckpt.CheckpointCallback(str(tmp_path), monitor=None, keep_last=None, verbose=0)
    history = rerun(model, cb)
    assert history.epoch == [2, 3, 4]
    assert batches(model) == 15


@pytest.mark.parametrize("same_kernel", [True, False], ids=["same-kernel", "new-model"])
def test_interrupted_with_the_newest_checkpoint_corrupted_falls_back_one(tmp_path, same_kernel):
    model = canary_model()
    cb = interrupted_fit(model, tmp_path, save_freq="epoch", at_epoch=2)
    damaged = corrupt_newest(tmp_path)
    if not same_kernel:
        model = canary_model()
        cb = tfckpt.CheckpointCallback(str(tmp_path), monitor=None, keep_last=None, verbose=0)
    with pytest.warns(UserWarning, match=f"skipping {damaged.name}"):
        history = rerun(model, cb)
    assert history.epoch == [1, 2, 3, 4]
    assert batches(model) == 15


def test_same_kernel_resume_says_so_once(tmp_path, capsys):
    model = canary_model()
    cb = interrupted_fit(model, tmp_path, save_freq="epoch", at_epoch=2)
    cb.verbose = 1
    capsys.readouterr()
    rerun(model, cb)
    lines = [line for line in capsys.readouterr().out.splitlines() if "interrupted" in line]
    assert lines == [
        "tfckpt: resuming the interrupted fit: restored ckpt-000002 "
        "(epoch 2, step 6); continuing at epoch 3."
    ]


def test_a_completed_fit_is_trained_on(tmp_path):
    # After a fit that completed, a later fit trains `epochs` more ("train on").
    model = canary_model()
    cb = tfckpt.CheckpointCallback(str(tmp_path), monitor=None, verbose=0)
    model.fit(X, Y, batch_size=4, epochs=2, verbose=0, callbacks=[cb])
    history = model.fit(X, Y, batch_size=4, epochs=2, verbose=0, callbacks=[cb])
    assert history.epoch == [0, 1] and batches(model) == 12
    assert tfckpt.open(str(tmp_path)).latest.epoch == 4


def test_a_preemption_that_returned_is_resumed_by_the_next_fit(tmp_path):
    model = canary_model()
    cb = tfckpt.CheckpointCallback(
        str(tmp_path), monitor=None, verbose=0, preemption_exit_code=None
    )

    class Term(keras.callbacks.Callback):
        def on_train_batch_end(self, batch, logs=None):
            if batches(model) == 4:
                signal.raise_signal(signal.SIGTERM)

    model.fit(X, Y, batch_size=4, epochs=5, verbose=0, callbacks=[cb, Term()])
    stopped = tfckpt.open(str(tmp_path)).latest
    assert (stopped.epoch, stopped.batch) == (1, 2)  # acted on at the next batch end
    history = rerun(model, cb)
    assert history.epoch == [1, 2, 3, 4] and batches(model) == 15


class RaiseIn(keras.callbacks.Callback):
    """Raises KeyboardInterrupt (Ctrl-C) in one hook, once."""

    def __init__(self, hook):
        super().__init__()
        self.hook = hook

    def _maybe(self, hook):
        if hook == self.hook:
            self.hook = None
            raise KeyboardInterrupt

    def on_train_begin(self, logs=None):
        self._maybe("on_train_begin")

    def on_epoch_begin(self, epoch, logs=None):
        if epoch == 1:
            self._maybe("on_epoch_begin")

    def on_train_batch_begin(self, batch, logs=None):
        if batch == 1:
            self._maybe("on_train_batch_begin")

    def on_test_batch_end(self, batch, logs=None):  # inside validation
        self._maybe("on_test_batch_end")

    def on_epoch_end(self, epoch, logs=None):
        self._maybe("on_epoch_end")


HOOKS = [
    "on_train_begin",
    "on_epoch_begin",
    "on_train_batch_begin",
    "on_test_batch_end",
    "on_epoch_end",
]


@pytest.mark.parametrize("hook", HOOKS)
@pytest.mark.parametrize("async_save", [False, True], ids=["sync", "async"])
def test_ctrl_c_anywhere_in_fit_puts_everything_back(tmp_path, data, hook, async_save):
    model = make_model()
    handler = signal.getsignal(signal.SIGTERM)
    model.make_train_function()  # fit keeps this one (it makes one only when there is none)
    train_function = model.train_function
    cb = tfckpt.CheckpointCallback(str(tmp_path), verbose=0, async_save=async_save)
    with pytest.raises(KeyboardInterrupt):
        model.fit(*data, validation_split=0.25, epochs=3, verbose=0, callbacks=[cb, RaiseIn(hook)])
    assert signal.getsignal(signal.SIGTERM) is handler
    assert not [
        t
        for t in threading.enumerate()
        if t.name.startswith(("tfckpt-save", "tfckpt-reap", "tfckpt-seal"))
    ]
    DirectoryLock(str(tmp_path), exclusive=True).release()  # nobody holds the directory
    assert model.train_function is train_function
    assert not {"evaluate", "reset_metrics", "finalize_variable_values"} & (
        set(vars(model)) | set(vars(model.optimizer))
    )
    assert tfckpt.verify(str(tmp_path)) == [
        (r.name, None) for r in tfckpt.open(str(tmp_path)).checkpoints
    ]
    # The notebook cell again: it works, and its handler is gone when it ends.
    model.fit(*data, validation_split=0.25, epochs=3, verbose=0, callbacks=[cb])
    assert signal.getsignal(signal.SIGTERM) is handler
    assert tfckpt.open(str(tmp_path)).latest.epoch == 3


def test_sigterm_after_an_interrupted_fit_ends_the_process(tmp_path):
    # The handler tfckpt installed for the fit is gone: a SIGTERM afterwards
    # ends the process as it did before the fit.
    code = f"""
import os, signal, time, keras, numpy as np, tfckpt
model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(1)])
model.compile("sgd", "mse")
class Boom(keras.callbacks.Callback):
    def on_epoch_end(self, epoch, logs=None):
        raise KeyboardInterrupt
try:
    model.fit(np.ones((8, 4)), np.ones((8, 1)), epochs=3, verbose=0,
              callbacks=[tfckpt.CheckpointCallback({str(tmp_path)!r}, monitor=None), Boom()])
except KeyboardInterrupt:
    print("interrupted", flush=True)
os.kill(os.getpid(), signal.SIGTERM)
time.sleep(30)
print("still alive", flush=True)
"""
    proc = subprocess.run(
        [sys.executable, "-c", code], env=script_env(), capture_output=True, text=True, timeout=300
    )
    assert "interrupted" in proc.stdout, (proc.returncode, proc.stdout, proc.stderr)
    assert "interrupted" in proc.stdout and "still alive" not in proc.stdout, proc.stderr
    assert proc.returncode == -signal.SIGTERM


def test_an_error_in_tfckpts_own_begin_releases_everything(tmp_path, data):
    model = make_model()
    model.fit(
        *data,
        epochs=1,
        verbose=0,
        callbacks=[tfckpt.CheckpointCallback(str(tmp_path), monitor=None, verbose=0)],
    )
    handler = signal.getsignal(signal.SIGTERM)
    other = keras.Sequential([keras.Input((8,)), keras.layers.Dense(3), keras.layers.Dense(1)])
    other.compile("adam", "mse")
    with pytest.raises(tfckpt.IncompatibleCheckpointError):
        other.fit(
            *data,
            epochs=1,
            verbose=0,
            callbacks=[tfckpt.CheckpointCallback(str(tmp_path), monitor=None, verbose=0)],
        )
    assert signal.getsignal(signal.SIGTERM) is handler
    DirectoryLock(str(tmp_path), exclusive=True).release()


def test_later_callbacks_epoch_end_changes_replace_the_epochs_checkpoint(tmp_path, data):
    # ReduceLROnPlateau after tfckpt lowers the learning rate at the same epoch
    # end: the epoch's checkpoint holds the lowered rate, and one checkpoint per
    # epoch remains.
    model = make_model()
    plateau = keras.callbacks.ReduceLROnPlateau("loss", factor=0.5, patience=0, min_delta=10.0)
    cb = tfckpt.CheckpointCallback(str(tmp_path), monitor=None, keep_last=None, verbose=0)
    model.fit(*data, epochs=3, verbose=0, callbacks=[cb, plateau])
    records = tfckpt.open(str(tmp_path)).checkpoints
    assert [r.epoch for r in records] == [1, 2, 3]
    assert all(r.manifest.get("supersedes") for r in records)
    fresh = make_model(seed=1)
    tfckpt.restore(fresh, str(tmp_path), optimizer=fresh.optimizer)
    assert float(fresh.optimizer.learning_rate) == float(model.optimizer.learning_rate)
    assert float(model.optimizer.learning_rate) == pytest.approx(1e-2 / 4)  # epochs 2 and 3
    # Nothing changed after it: one save per epoch, no replacement.
    other = tmp_path / "plain"
    make_model().fit(
        *data,
        epochs=2,
        verbose=0,
        callbacks=[tfckpt.CheckpointCallback(str(other), monitor=None, keep_last=None, verbose=0)],
    )
    plain = tfckpt.open(str(other)).checkpoints
    assert [r.name for r in plain] == ["ckpt-000001", "ckpt-000002"]
    assert not any(r.manifest.get("supersedes") for r in plain)


@pytest.mark.parametrize("data, rebuild", [("arrays", False), ("tfdata", True)])
def test_same_kernel_resume_is_bitwise_exact(tmp_path, data, rebuild):
    # Ctrl-C mid-epoch (Dropout, shuffled data), then the same cell again.
    args = ["--data", data] + (["--rebuild"] if rebuild else [])
    proc = run_script("same_kernel.py", tmp_path, *args)
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["epochs_run"] == [1, 2, 3] and result["iterations"] == 32
    assert result["resumed"] == result["reference"]
    assert "data order" not in proc.stderr


def test_same_kernel_resume_with_the_same_reshuffling_dataset_says_the_order_differs(tmp_path):
    # TF draws a reshuffling tf.data pipeline's seeds per dataset object, and
    # this object already made the interrupted epoch's iterator: say so once.
    proc = run_script("same_kernel.py", tmp_path, "--data", "tfdata")
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr.count("build the dataset again, a new object, to resume exactly") == 1
    assert json.loads(proc.stdout.strip().splitlines()[-1])["iterations"] == 32


def test_an_exception_a_callback_catches_is_not_a_way_out_of_fit(tmp_path, data):
    # A callback calls model.evaluate itself (an extra data set, an OOM
    # fallback) and catches what it raises: fit goes on, and so does tfckpt.
    class ExtraEval(keras.callbacks.Callback):
        caught = 0

        def on_epoch_end(self, epoch, logs=None):
            try:
                self.model.evaluate(np.ones((4, 3)), np.ones((4, 1)), verbose=0)  # wrong shape
            except ValueError:
                ExtraEval.caught += 1

    model = make_model()
    cb = tfckpt.CheckpointCallback(str(tmp_path), monitor=None, keep_last=None, verbose=0)
    history = model.fit(*data, epochs=3, verbose=0, callbacks=[cb, ExtraEval()])
    assert ExtraEval.caught == 3 and history.epoch == [0, 1, 2]
    assert [r.epoch for r in tfckpt.open(str(tmp_path)).checkpoints] == [1, 2, 3]


def test_a_fork_interrupted_before_its_first_checkpoint_forks_again(tmp_path, data):
    parent = tmp_path / "parent"
    model = make_model()
    model.fit(
        *data,
        epochs=3,
        verbose=0,
        callbacks=[tfckpt.CheckpointCallback(str(parent), monitor=None, verbose=0)],
    )
    fork = tfckpt.CheckpointCallback(
        str(tmp_path / "fork"), monitor=None, verbose=0, init_from=str(parent)
    )
    model = make_model(seed=7)
    with pytest.raises(RuntimeError, match="interrupted"):
        model.fit(*data, epochs=2, verbose=0, callbacks=[fork, Interrupt(at_batch=1)])
    assert tfckpt.open(str(tmp_path / "fork")).checkpoints == []
    # As a new process would: initialized from the parent again, its epoch
    # counter carried on, the fit's own 2 epochs numbered on from it.
    history = model.fit(*data, epochs=2, verbose=0, callbacks=[fork])
    assert history.epoch == [0, 1]
    run = tfckpt.open(str(tmp_path / "fork"))
    assert [r.epoch for r in run.checkpoints][-1] == 5 and run.parent["name"] == "ckpt-000003"


def test_an_interrupted_fit_with_no_checkpoint_says_it_trains_on(tmp_path, data):
    model = make_model()
    cb = tfckpt.CheckpointCallback(str(tmp_path), monitor=None, verbose=0)
    with pytest.raises(RuntimeError, match="interrupted"):
        model.fit(*data, epochs=2, verbose=0, callbacks=[cb, Interrupt(at_batch=1)])
    with pytest.warns(UserWarning, match="committed no checkpoint"):
        history = model.fit(*data, epochs=2, verbose=0, callbacks=[cb])
    assert history.epoch == [0, 1]


def fit_iterators():
    """The Keras epoch iterators alive now (fit's data: the tf.data iterator,
    its buffers and threads hang off them)."""
    from keras.src.trainers.epoch_iterator import EpochIterator

    return [o for o in gc.get_objects() if isinstance(o, EpochIterator)]


@pytest.mark.parametrize("way_out", ["returned", "raised"])
def test_fit_data_is_freed_when_fit_ends_not_at_a_later_collection(tmp_path, way_out):
    # The callback and its session form a reference cycle. Were fit's data
    # held there, the tf.data iterator would be freed by some later garbage
    # collection, in whatever thread runs it, and its destructor waits for the
    # pipeline's autotuning thread to wake (tens of seconds measured).
    dataset = tf.data.Dataset.from_tensor_slices((X, Y)).batch(4).prefetch(tf.data.AUTOTUNE)
    model = canary_model()
    gc.collect()
    before = len(fit_iterators())
    cb = tfckpt.CheckpointCallback(str(tmp_path), monitor=None, verbose=0)
    callbacks = [cb] + ([Interrupt(at_epoch=2)] if way_out == "raised" else [])
    gc.disable()  # only reference counting frees anything below
    try:
        try:
            model.fit(dataset, epochs=3, verbose=0, shuffle=False, callbacks=callbacks)
        except RuntimeError:
            assert way_out == "raised"
        left = len(fit_iterators())
    finally:
        gc.enable()
    assert left == before, f"{left - before} epoch iterator(s) of the fit still alive"
    assert cb is not None  # the callback itself is still referenced
    assert [r.epoch for r in tfckpt.open(tmp_path).checkpoints][-1] == (
        3 if way_out == "returned" else 2
    )
