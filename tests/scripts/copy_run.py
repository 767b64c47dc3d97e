"""Copies a run with tfckpt.copy; with KILL_AT=N it dies by SIGKILL at the
manifest step of the Nth checkpoint it commits (files copied and verified in
the temporary directory, not yet renamed into place).

    python copy_run.py SRC DST [KILL_AT]
"""

import support  # noqa: F401  # isort: skip (first: it sets the environment keras reads on import)
import os
import signal
import sys

import tfckpt
from tfckpt.store import checkpoint_store

src, dst = sys.argv[1], sys.argv[2]
kill_at = int(sys.argv[3]) if len(sys.argv) > 3 else None
commits = 0


def crash(name):
    global commits
    if name == "manifest":
        commits += 1
        if commits == kill_at:
            os.kill(os.getpid(), signal.SIGKILL)


checkpoint_store._commit_step = crash
report = tfckpt.copy(src, dst)
print("copied", len(report.copied), "skipped", len(report.skipped), flush=True)
