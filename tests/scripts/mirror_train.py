"""A training script with a remote tier, run as a real subprocess.

    python mirror_train.py DIR MIRROR --epochs N [--kill-mid-upload K] [--out result.json]

The "same script" a user reruns on a new machine: nothing in it changes
between runs. `--kill-mid-upload K` sends SIGKILL to itself while the upload
of the checkpoint of epoch K is in flight (objects sent, manifest not yet):
the machine dies mid-upload. Uploads are slowed so that moment exists.
"""

import support  # isort: skip (first: it sets the environment keras reads on import)
import argparse
import json
import os
import signal
import sys

import numpy as np

import tfckpt
from tfckpt.remote import remote_run

p = argparse.ArgumentParser()
p.add_argument("directory")
p.add_argument("mirror")
p.add_argument("--epochs", type=int, default=6)
p.add_argument("--kill-mid-upload", type=int, default=None)
p.add_argument("--out", default=None)
args = p.parse_args()

if args.kill_mid_upload is not None:
    upload = remote_run.RemoteRun._upload

    def upload_then_die(self, record, fname, entry, progress):
        md5 = upload(self, record, fname, entry, progress)
        if record.epoch == args.kill_mid_upload and ".data-" in fname:
            os.kill(os.getpid(), signal.SIGKILL)  # a data file is up, the manifest is not
        return md5

    remote_run.RemoteRun._upload = upload_then_die

rng = np.random.default_rng(0)
x, y = support.draw_data(rng, 512, 16, informative=4)
xv, yv = support.draw_data(rng, 128, 16, informative=4)
model = support.make_model(features=16, units=32, seed=1)
cb = tfckpt.CheckpointCallback(
    args.directory, monitor="val_loss", keep_last=2, keep_best=1, mirror=args.mirror
)
history = model.fit(
    x, y, validation_data=(xv, yv), batch_size=64, epochs=args.epochs, verbose=0, callbacks=[cb]
)
result = {
    "epochs_run": history.epoch,
    "restored": cb.restored.name if cb.restored else None,
    "restored_epoch": cb.restored.epoch if cb.restored else None,
    "digest": support.digest(model),
}
if args.out:
    with open(args.out, "w") as f:
        json.dump(result, f)
print(json.dumps(result))
sys.stdout.flush()
