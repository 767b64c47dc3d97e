"""Real OS errors after a checkpoint's commit point: the open-file limit
(RLIMIT_NOFILE) is lowered at one step of the commit protocol, so the next
open() fails with EMFILE ("Too many open files").

    python commit_errors.py DIR fsync|delete

fsync: lowered right after the rename (the commit point), so the fsync of the
    run directory fails; an observer lifts it when the commit is reported.
delete: lowered once TF's state file is written, so retention's deletions
    fail to sync the run directory; lifted when the save returns.

Prints one JSON line.
"""

import support  # isort: skip (first: it sets the environment keras reads on import)
import json
import resource
import sys
import warnings

import tfckpt
from tfckpt.store import checkpoint_store

directory, scenario = sys.argv[1], sys.argv[2]
SOFT, HARD = resource.getrlimit(resource.RLIMIT_NOFILE)
LOWER_AT = {"fsync": "rename", "delete": "state_file"}[scenario]


def lift():
    resource.setrlimit(resource.RLIMIT_NOFILE, (SOFT, HARD))


class Recorder(support.Recorder):
    """Lifts the limit as soon as a commit is reported."""

    def on_commit(self, record):
        lift()
        super().on_commit(record)


model = support.small_model()
with tfckpt.CheckpointManager(directory, model, keep_last=None) as manager:
    manager.save(1, epoch=1, metrics={"loss": 0.5})
    manager.save(2, epoch=2, metrics={"loss": 0.4})

recorder = Recorder()
manager = tfckpt.CheckpointManager(
    directory, model, monitor="loss", keep_last=1, keep_best=0, observers=[recorder]
)
armed = [True]


def lower(name):
    if name == LOWER_AT and armed[0]:
        armed[0] = False
        resource.setrlimit(resource.RLIMIT_NOFILE, (3, HARD))  # fds 0-2 only


checkpoint_store._commit_step = lower
result = {}
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    try:
        record = manager.save(3, epoch=3, metrics={"loss": 0.3})
        result["returned"] = record.name
    except Exception as e:
        result["error"] = f"{type(e).__name__}: {e}"
        result["is_write_error"] = isinstance(e, tfckpt.CheckpointWriteError)
    finally:
        lift()
result["warnings"] = [str(w.message) for w in caught if "tfckpt" in str(w.message)]
result["events"] = recorder.events
result["best"] = manager.best_value
result["checkpoints"] = [r.name for r in manager.checkpoints]
manager.close()
print(json.dumps(result))
