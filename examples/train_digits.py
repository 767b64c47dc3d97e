"""Train a small classifier on scikit-learn's digits with tfckpt.

Run it, interrupt it (Ctrl-C, kill -9, or --kill-at-epoch K), run it again:
training continues where it stopped, with the best checkpoint kept.

    python examples/train_digits.py                   # trains, or resumes
    python examples/train_digits.py --kill-at-epoch 4 # simulates a crash
"""

import argparse
import os
import signal

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")

import keras
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split

import tfckpt

parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument("--dir", default="runs/digits", help="run directory")
parser.add_argument("--epochs", type=int, default=12)
parser.add_argument(
    "--kill-at-epoch",
    type=int,
    default=None,
    help="SIGKILL this process after that epoch (to try the resume)",
)
args = parser.parse_args()

keras.utils.set_random_seed(42)
x, y = load_digits(return_X_y=True)
x = (x / 16.0).astype("float32")
x_train, x_val, y_train, y_val = train_test_split(x, y, test_size=0.2, random_state=0)

model = keras.Sequential(
    [
        keras.Input((64,)),
        keras.layers.Dense(128, activation="relu"),
        keras.layers.Dense(10, activation="softmax"),
    ]
)
model.compile(
    optimizer=keras.optimizers.Adam(keras.optimizers.schedules.ExponentialDecay(3e-3, 100, 0.9)),
    loss="sparse_categorical_crossentropy",
    metrics=["accuracy"],
)


class SimulatedCrash(keras.callbacks.Callback):
    def on_epoch_begin(self, epoch, logs=None):
        if epoch == args.kill_at_epoch:
            print(f"-- simulating a crash (SIGKILL) after epoch {epoch} --", flush=True)
            os.kill(os.getpid(), signal.SIGKILL)


checkpoints = tfckpt.CheckpointCallback(args.dir, monitor="val_accuracy", keep_last=3, keep_best=1)
model.fit(
    x_train,
    y_train,
    validation_data=(x_val, y_val),
    epochs=args.epochs,
    batch_size=64,
    verbose=2,
    callbacks=[checkpoints, SimulatedCrash()],
)

run = tfckpt.open(args.dir)
print(f"\n{len(run.checkpoints)} checkpoints kept in {args.dir}:")
for c in run.checkpoints:
    print(
        f"  {c.name}  epoch {c.epoch:>2}  val_accuracy {c.metrics['val_accuracy']:.4f}"
        f"  kept: {c.kept}"
    )
best = keras.models.clone_model(model)
tfckpt.restore(best, args.dir, which="best")
best.compile(loss="sparse_categorical_crossentropy", metrics=["accuracy"])
_, accuracy = best.evaluate(x_val, y_val, verbose=0)
print(f"best checkpoint: {run.best.name}, validation accuracy {accuracy:.4f}")
