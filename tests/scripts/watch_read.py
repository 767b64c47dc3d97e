"""Follows a run directory with tfckpt.watch, run as a real subprocess.

    python watch_read.py DIR OUT [--hold SECONDS] [--hold-first-until-gone]

Reads every record it is given at once with plain `tf.train.Checkpoint.read`
(and every tensor through TF's reader, which checks each tensor's CRC32C),
holds it `--hold` seconds while the trainer goes on, and reads it again. With
`--hold-first-until-gone`, it holds the first record until the trainer's
retention has deleted that checkpoint from the run directory. Writes what it
saw to OUT (JSON) when the watch ends by itself.
"""

import support  # isort: skip (first: it sets the environment keras reads on import)
import argparse
import json
import os
import time

import tensorflow as tf

import tfckpt

p = argparse.ArgumentParser()
p.add_argument("directory")
p.add_argument("out")
p.add_argument("--hold", type=float, default=0.5)
p.add_argument("--units", type=int, default=32)
p.add_argument("--hold-first-until-gone", action="store_true")
args = p.parse_args()

model = support.architecture(features=16, units=args.units)  # train.py's, not compiled


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
