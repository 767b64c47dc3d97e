"""Forking a run from another run's checkpoint (init_from), and observers of
commits and deletions."""

import glob

import keras
import numpy as np
import pytest
import tensorflow as tf
from support import Recorder, all_variables, assert_same_variables, make_data, make_model

import tfckpt


def fit(model, directory, epochs, **kwargs):
    x, y = make_data(128)
    cb = tfckpt.CheckpointCallback(str(directory), verbose=0, **kwargs)
    model.fit(x, y, validation_split=0.25, epochs=epochs, batch_size=32, verbose=0, callbacks=[cb])
    return cb


def test_fork_from_best_continues_from_the_parent_and_records_it(tmp_path):
    parent_dir, child_dir = tmp_path / "exp1", tmp_path / "exp2"
    fit(make_model(), parent_dir, 4, keep_last=None)
    best = tfckpt.open(str(parent_dir)).best
    expected = make_model(seed=1)
    tfckpt.open(str(parent_dir)).restore(expected, best.step)

    child = make_model(seed=9)  # other initial weights: all come from the parent
    cb = fit(child, child_dir, 0, init_from=f"{parent_dir}@best")  # fork, train nothing
    assert cb.restored.name == best.name
    weights = lambda m: {k: v for k, v in all_variables(m).items() if k.startswith("model/")}  # noqa: E731
    assert_same_variables(weights(child), weights(expected))  # nothing trained yet
    assert int(child.optimizer.iterations) == best.step  # the parent's optimizer state

    rerun = make_model(seed=9)  # nothing was saved: a rerun forks again
    fit(rerun, child_dir, 2, init_from=f"{parent_dir}@best")  # 2 epochs, numbered on
    run = tfckpt.open(str(child_dir))
    assert [c.epoch for c in run.checkpoints][-1] == best.epoch + 2
    assert run.checkpoints[-1].manifest["parent"]["name"] == best.name
    assert run.checkpoints[-1].manifest["parent"]["step"] == best.step
    # The parent's history up to the fork, then the child's own epochs.
    assert run.history["epoch"] == list(range(1, best.epoch + 3))
    assert tfckpt.open(str(parent_dir)).checkpoints  # the parent is untouched


def test_fork_without_optimizer_and_by_epoch(tmp_path):
    parent_dir = tmp_path / "exp1"
    fit(make_model(), parent_dir, 3, keep_last=None)
    child = make_model(optimizer=keras.optimizers.SGD(0.1), seed=3)
    cb = fit(child, tmp_path / "exp2", 1, init_from=f"{parent_dir}@epoch=2", init_optimizer=False)
    assert cb.restored.epoch == 2
    assert int(child.optimizer.iterations) == 3  # a fresh SGD: one epoch of 3 steps
    parent = tfckpt.open(str(tmp_path / "exp2")).checkpoints[-1].manifest["parent"]
    assert parent["epoch"] == 2 and parent["optimizer"] is False


def test_a_rerun_of_a_fork_resumes_the_fork(tmp_path):
    parent_dir, child_dir = tmp_path / "lr@0.01", tmp_path / "exp2"  # "@" in a name
    fit(make_model(), parent_dir, 2)
    fit(make_model(), child_dir, 1, init_from=str(parent_dir))  # the run's epoch 3
    rerun = make_model(seed=5)
    cb = fit(rerun, child_dir, 2, init_from=str(parent_dir))
    assert cb.restored.epoch == 3  # the child's own latest, not the parent
    assert tfckpt.open(str(child_dir)).latest.epoch == 4  # the fit's 2 epochs, numbered on
    assert tfckpt.open(str(child_dir)).latest.manifest["parent"]["epoch"] == 2


def test_bad_init_from_is_rejected_with_the_allowed_forms(tmp_path):
    with pytest.raises(ValueError, match="cannot read the selection 'bogus'.*epoch=N"):
        tfckpt.CheckpointCallback(str(tmp_path / "b"), init_from="runs/a@bogus")
    fit(make_model(), tmp_path / "a", 1)
    with pytest.raises(tfckpt.CheckpointNotFoundError, match="step 999|999"):
        fit(make_model(), tmp_path / "b", 2, init_from=f"{tmp_path / 'a'}@999")
    assert tfckpt.open(str(tmp_path / "a")).checkpoints  # nothing lost


class Broken(tfckpt.CheckpointObserver):
    def on_commit(self, record):
        raise RuntimeError("observer bug")


def test_observers_see_every_commit_and_deletion(tmp_path):
    recorder = Recorder()
    with pytest.warns(UserWarning, match="observer .*Broken.* failed in on_commit.*observer bug"):
        fit(
            make_model(),
            tmp_path / "run",
            4,
            monitor=None,
            keep_last=2,
            observers=[Broken(), recorder],
        )
    assert recorder.events == [
        ("commit", "ckpt-000001"),
        ("commit", "ckpt-000002"),
        ("commit", "ckpt-000003"),
        ("delete", "ckpt-000001"),
        ("commit", "ckpt-000004"),
        ("delete", "ckpt-000002"),
    ]
    assert [c.name for c in tfckpt.open(str(tmp_path / "run")).checkpoints] == [
        "ckpt-000003",
        "ckpt-000004",
    ]  # the broken observer cost nothing
    with pytest.raises(TypeError, match="observers"):
        tfckpt.CheckpointCallback(str(tmp_path / "x"), observers=[print])


def test_tensorboard_observer_writes_metrics_and_events(tmp_path):
    logdir = str(tmp_path / "tb")
    fit(
        make_model(),
        tmp_path / "run",
        3,
        keep_last=1,
        observers=[tfckpt.TensorBoardObserver(logdir)],
    )
    scalars, texts, steps = {}, [], []
    for path in glob.glob(f"{logdir}/events.out.tfevents.*"):
        for event in tf.compat.v1.train.summary_iterator(path):
            for value in event.summary.value:
                tensor = tf.make_ndarray(value.tensor)
                if value.tag == "checkpoint/events":
                    texts.append(tensor.item().decode())
                    steps.append(event.step)
                else:
                    scalars.setdefault(value.tag, []).append((event.step, float(tensor)))
    run = tfckpt.open(str(tmp_path / "run"))
    assert scalars["checkpoint/val_loss"][-1] == (
        run.latest.step,
        pytest.approx(run.latest.metrics["val_loss"]),
    )
    assert len(scalars["checkpoint/val_loss"]) == 3
    assert "saved ckpt-000003 (epoch 3, step 9)" in texts
    assert any(t.startswith("deleted ckpt-00000") for t in texts)
    assert steps == sorted(steps)  # deletions at the newest step: TensorBoard keeps all
    assert np.isfinite([v for _, v in scalars["checkpoint/loss"]]).all()
