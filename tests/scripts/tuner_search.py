"""A KerasTuner RandomSearch (2 trials x 6 epochs) made resumable by tfckpt.

    python tuner_search.py DIR OUT.json [KILL_AT_EPOCH]

The "same script" a user reruns after a crash. With KILL_AT_EPOCH=K it sends
SIGKILL to itself inside epoch K + 1 of the first trial (after tfckpt's
checkpoint of epoch K). Every fit it runs appends the epochs it trained
(1-based) to DIR/epochs.log; OUT.json gets the final trials and best model.
"""

import support  # isort: skip (first: it sets the environment keras reads on import)
import json
import os
import signal
import sys

import keras
import keras_tuner
import numpy as np

import tfckpt
import tfckpt.keras_tuner

directory, out = sys.argv[1], sys.argv[2]
kill_at = int(sys.argv[3]) if len(sys.argv) > 3 else None
log = os.path.join(directory, "epochs.log")
os.makedirs(directory, exist_ok=True)

keras.utils.set_random_seed(1)
rng = np.random.default_rng(0)
x, y = support.draw_data(rng, 256, 8)
xv, yv = support.draw_data(rng, 64, 8)


def build(hp):
    model = keras.Sequential(
        [
            keras.Input((8,)),
            keras.layers.Dense(hp.Choice("units", [4, 8, 16]), activation="relu"),
            keras.layers.Dense(1, activation="sigmoid"),
        ]
    )
    lr = hp.Choice("lr", [1e-2, 3e-2, 1e-1])
    model.compile(keras.optimizers.Adam(lr), "binary_crossentropy", metrics=["accuracy"])
    return model


# The objective, a metric set by a callback: the same for every run of the
# script, best at epoch 3 (before the kill) and second best at epoch 5 (after
# it), plus 1/100 of the trial's units (the trials differ).
SCORES = [5.0, 4.0, 1.0, 3.0, 2.0, 6.0]


class Log(keras.callbacks.Callback):
    """Sets val_score, writes each epoch it sees to the log at once, and kills
    the process inside epoch KILL_AT_EPOCH + 1 (epoch KILL_AT_EPOCH is saved)."""

    def on_train_begin(self, logs=None):
        with open(log, "a") as f:
            f.write("fit\n")

    def on_train_batch_end(self, batch, logs=None):
        if kill_at is not None and self.epoch == kill_at and batch == 1:
            os.kill(os.getpid(), signal.SIGKILL)

    def on_epoch_begin(self, epoch, logs=None):
        self.epoch = epoch  # 0-based: epoch + 1 is being trained

    def on_epoch_end(self, epoch, logs=None):
        logs["val_score"] = SCORES[epoch] + self.model.layers[0].units / 100
        with open(log, "a") as f:
            f.write(f"{epoch + 1}\n")


tuner = keras_tuner.RandomSearch(
    build,
    objective=keras_tuner.Objective("val_score", "min"),
    max_trials=2,
    seed=3,
    directory=directory,
    project_name="search",
)
tuner = tfckpt.keras_tuner.resumable(tuner, keep_last=2, verbose=0)
tuner.search(x, y, epochs=6, validation_data=(xv, yv), batch_size=32, verbose=0, callbacks=[Log()])


def final_weights(trial):
    """The weights at the end of the trial (its newest checkpoint)."""
    model = build(trial.hyperparameters)
    tfckpt.restore(model, tfckpt.keras_tuner.trial_directory(tuner, trial.trial_id), "latest")
    return [w.tolist() for w in model.get_weights()]


trials = {
    t.trial_id: {
        "status": t.status,
        "hp": t.hyperparameters.values,
        "score": t.score,
        "best_step": t.best_step,
        "directory": tfckpt.keras_tuner.trial_directory(tuner, t.trial_id),
        "final_weights": final_weights(t),
    }
    for t in tuner.oracle.trials.values()
}
best_trial = tuner.oracle.get_best_trials(1)[0]
model = tuner.get_best_models(1)[0]
hp = best_trial.hyperparameters
expected = build(hp)
tfckpt.restore(expected, tfckpt.keras_tuner.trial_directory(tuner, best_trial.trial_id), "best")
result = {
    "tfckpt_best_weights": [w.tolist() for w in expected.get_weights()],
    "trials": trials,
    "best_trial": best_trial.trial_id,
    "best_weights": [w.tolist() for w in model.get_weights()],
    "best_val_loss": float(model.evaluate(xv, yv, verbose=0)[0]),
}
with open(out, "w") as f:
    json.dump(result, f)
print("done", flush=True)
