"""tfckpt.keras_tuner: a KerasTuner search SIGKILLed mid-trial resumes that trial."""

import json
import os
import signal
import sys

import keras
import keras_tuner  # the test extra installs it: pip install ".[test]"
import numpy as np
import pytest
from support import make_data, make_model, run_script

import tfckpt
import tfckpt.keras_tuner


def read_log(directory):
    with open(os.path.join(directory, "epochs.log")) as f:
        return [line if line == "fit" else int(line) for line in f.read().split()]


def test_a_search_killed_mid_trial_resumes_that_trial_and_reruns_nothing_done(tmp_path):
    directory, out = str(tmp_path / "tuning"), str(tmp_path / "result.json")
    killed = run_script("tuner_search.py", directory, out, 3)
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    assert read_log(directory) == ["fit", 1, 2, 3]  # killed inside epoch 4 of trial 0
    with open(os.path.join(directory, "search", "trial_0", "trial.json")) as f:
        hp_before = json.load(f)["hyperparameters"]["values"]

    run_script("tuner_search.py", directory, out, check=True)
    # Trial 0 again (same id) from epoch 4, then trial 1 from scratch.
    assert read_log(directory) == ["fit", 1, 2, 3, "fit", 4, 5, 6, "fit", 1, 2, 3, 4, 5, 6]
    with open(out) as f:
        result = json.load(f)
    trials = result["trials"]
    assert sorted(trials) == ["0", "1"]
    assert all(t["status"] == "COMPLETED" for t in trials.values())
    assert trials["0"]["hp"] == hp_before
    for trial in trials.values():
        run = tfckpt.open(trial["directory"])
        assert run.history["epoch"] == [1, 2, 3, 4, 5, 6]
        # The objective is best at epoch 3, before the kill: KerasTuner scores
        # the whole trial and tfckpt's retention keeps that checkpoint.
        expected = 1.0 + trial["hp"]["units"] / 100
        assert trial["score"] == pytest.approx(expected)
        assert trial["best_step"] == 2
        assert run.best.epoch == 3
        assert run.best.metrics["val_score"] == pytest.approx(expected)
    best = min(trials, key=lambda t: trials[t]["hp"]["units"])
    assert result["best_trial"] == best
    # get_best_models() loads the best trial's best checkpoint (epoch 3): the
    # one tfckpt.open(trial_dir).best names.
    for a, b in zip(result["best_weights"], result["tfckpt_best_weights"]):
        np.testing.assert_array_equal(np.array(a), np.array(b))
    assert np.isfinite(result["best_val_loss"])

    run_script("tuner_search.py", directory, out, check=True)  # all done: nothing reruns
    assert read_log(directory) == ["fit", 1, 2, 3, "fit", 4, 5, 6, "fit", 1, 2, 3, 4, 5, 6]

    # The resumed trial ends where an uninterrupted search's trial 0 ends, bit for bit.
    reference, reference_out = str(tmp_path / "uninterrupted"), str(tmp_path / "ref.json")
    run_script("tuner_search.py", reference, reference_out, check=True)
    with open(reference_out) as f:
        uninterrupted = json.load(f)["trials"]["0"]
    assert uninterrupted["hp"] == trials["0"]["hp"]
    for a, b in zip(trials["0"]["final_weights"], uninterrupted["final_weights"]):
        np.testing.assert_array_equal(np.array(a), np.array(b))


def build(hp):
    model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(hp.Choice("u", [1, 2]))])
    model.compile("adam", "mse")
    return model


def test_bad_arguments_are_named(tmp_path, monkeypatch):
    def tuner(objective="val_loss"):
        return keras_tuner.RandomSearch(
            build, objective=objective, max_trials=1, directory=str(tmp_path), overwrite=True
        )

    with pytest.raises(TypeError, match="`tuner` must be a keras_tuner.Tuner"):
        tfckpt.keras_tuner.resumable("tuner")
    with pytest.raises(ValueError, match="`keep_best` must be an integer >= 1.*keep_best=0"):
        tfckpt.keras_tuner.resumable(tuner(), keep_best=0)
    with pytest.raises(ValueError, match="Received: monitor="):
        tfckpt.keras_tuner.resumable(tuner(), monitor="loss")
    with pytest.raises(ValueError, match="`keep_last` must"):
        tfckpt.keras_tuner.resumable(tuner(), keep_last=-1)
    with pytest.raises(ValueError, match="objective is a single metric"):
        tfckpt.keras_tuner.resumable(tuner(["val_loss", "loss"]))
    with pytest.raises(ValueError, match="Do not pass a tfckpt.CheckpointCallback"):
        tfckpt.keras_tuner.resumable(tuner()).search(
            np.zeros((4, 2)),
            np.zeros((4, 1)),
            epochs=1,
            verbose=0,
            callbacks=[tfckpt.CheckpointCallback(str(tmp_path / "mine"))],
        )
    same = tuner()
    assert tfckpt.keras_tuner.resumable(same) is tfckpt.keras_tuner.resumable(same)

    monkeypatch.setitem(sys.modules, "keras_tuner", None)  # as if not installed
    with pytest.raises(ImportError, match=r'pip install "tfckpt\[tuner\]"'):
        tfckpt.keras_tuner.resumable(same)


def test_a_resumed_trials_history_lists_a_metric_only_where_it_was_logged(tmp_path):
    # validation_freq=2: epochs 1 and 3 log no val_loss. The trial's whole
    # history is what Keras's own History of an uninterrupted fit holds.
    from keras_tuner.src.engine import tuner_utils  # what a trial's scoring runs

    from tfckpt.keras_tuner import _whole_history

    x, y = make_data()
    model = make_model()
    directory = str(tmp_path / "trial")

    def fit(epochs):
        cb = tfckpt.CheckpointCallback(directory, monitor="loss", verbose=0)
        return model.fit(
            x, y, epochs=epochs, validation_split=0.25, validation_freq=2, verbose=0, callbacks=[cb]
        )

    fit(2)
    model = make_model()  # a new process's model: the next fit resumes at epoch 3
    resumed = fit(4)
    assert resumed.epoch == [2, 3]
    whole = _whole_history(resumed, directory)
    assert whole.epoch == [0, 1, 2, 3]
    val_loss = whole.history["val_loss"]
    # As in Keras's History: only the epochs that logged it (2 and 4).
    assert len(val_loss) == 2 and len(whole.history["loss"]) == 4
    assert all(np.isfinite(v) for v in (*val_loss, *whole.history["loss"]))
    # What KerasTuner scores a trial by, from a History as Keras writes it.
    objective = keras_tuner.Objective("loss", "min")
    best = tuner_utils.convert_to_metrics_dict(whole, objective)
    assert best["loss"] == min(whole.history["loss"])
