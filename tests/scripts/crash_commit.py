"""Saves checkpoint A, then dies by SIGKILL at one step of checkpoint B's commit.

    python crash_commit.py DIR STEP

Weights are all 1.0 in A and all 2.0 in B, so a restore shows which one (or a
mix) a crash left behind. keep_last=1 makes B's commit delete A, so the
deletion steps are crash points too.
"""

import support  # isort: skip (first: it sets the environment keras reads on import)
import os
import signal
import sys

import tfckpt
from tfckpt.store import checkpoint_store

directory, crash_at = sys.argv[1], sys.argv[2]
model = support.small_model()
manager = tfckpt.CheckpointManager(directory, model, keep_last=1)
support.fill(model, 1.0)
manager.save(epoch=1)


def crash(name):
    if name == crash_at:
        os.kill(os.getpid(), signal.SIGKILL)


checkpoint_store._commit_step = crash
support.fill(model, 2.0)
manager.save(epoch=2)
print("no crash")
