"""Follows a run directory with tfckpt.watch, run as a real subprocess.

    python watch_read.py DIR OUT [--hold SECONDS] [--hold-first-until-gone]

Reads every record it is given at once with plain `tf.train.Checkpoint.read`
(and every tensor through TF's reader, which checks each tensor's CRC32C),
holds it `--hold` seconds while the trainer goes on, and reads it again. With
`--hold-first-until-gone`, it holds the first record until the trainer's
retention has deleted that checkpoint from the run directory. Writes what it
saw to OUT (JSON) when the watch ends by itself.
"""

import argparse
import json
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")

import time

import keras
import tensorflow as tf

import tfckpt

p = argparse.ArgumentParser()
p.add_argument("directory")
p.add_argument("out")
p.add_argument("--hold", type=float, default=0.5)
p.add_argument("--units", type=int, default=32)
p.add_argument("--hold-first-until-gone", action="store_true")
args = p.parse_args()

model = keras.Sequential(
    [
        keras.Input((16,)),
        keras.layers.Dense(args.units, activation="relu"),
        keras.layers.Dense(1, activation="sigmoid"),
    ]
)


def read(path):
    tf.train.Checkpoint(model=model).read(path).expect_partial().assert_existing_objects_matched()
    reader = tf.train.load_checkpoint(path)
    for key in reader.get_variable_to_shape_map():
        reader.get_tensor(key)  # checks the tensor's CRC32C


seen = []
for record in tfckpt.watch(args.directory, poll_interval=0.2):
    read(record.path)
    time.sleep(args.hold)  # the trainer saves and retention deletes meanwhile
    original = os.path.join(args.directory, record.name)
    if args.hold_first_until_gone and not seen:
        # Until it is gone, or training finished (then nothing deletes it).
        finished = os.path.join(args.directory, ".finished")
        while os.path.isdir(original) and not os.path.exists(finished):
            time.sleep(0.05)
    original_gone = not os.path.isdir(original)
    read(record.path)
    seen.append({"name": record.name, "step": record.step, "gone_while_held": original_gone})
with open(args.out, "w") as f:
    json.dump(seen, f)
