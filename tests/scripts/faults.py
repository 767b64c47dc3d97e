"""I/O fault injection, in the spirit of SQLite's: every filesystem call a
tfckpt operation makes fails once, in turn, with a real errno.

    LD_PRELOAD=inject.so python faults.py DIR --scenario save|async|restore|prune
        [--errnos rotate|ENOSPC,EIO,EACCES] [--every K]
    LD_PRELOAD=inject.so python faults.py DIR --scenario kill --at OP:N [--async]

Run with tests/faults/inject.so preloaded (see tests/test_faults.py). For each
scenario it counts the calls one operation makes on DIR (open, write, fsync,
rename, remove, listdir, stat, mkdir, close), then repeats the operation once
per call and errno with that call failing, and prints one JSON line per
injection: what the operation raised or warned, and the checks that follow
(every committed checkpoint verifies, none committed before was lost, the
restored state is the old or the new one, the next operation succeeds).
`--errnos rotate` fails each call once, with one of the errnos it can really
return, taken in turn; a list fails each call once per errno in it that it can
return. `--every K` injects at every K-th call only (a sample).

`--scenario kill --at OP:N` SIGKILLs the process at the N-th call of OP
(`OP:middle`: the middle one) of a save, after one save that counts them;
`DIR/digests.json` holds the state each checkpoint was saved from and the
state of the save that was killed, for the restart to check.
"""

import support  # isort: skip (first: it sets the environment keras reads on import)
import argparse
import ctypes
import errno
import faulthandler
import json
import os
import shutil
import warnings

import keras
import numpy as np
from fault_model import OPS, compiled

import tfckpt

# The errnos each call can really return (a stat never says the disk is full).
REAL_ERRNOS = {
    "open": ("ENOSPC", "EIO", "EACCES"),
    "write": ("ENOSPC", "EIO"),
    "fsync": ("ENOSPC", "EIO"),
    "rename": ("ENOSPC", "EIO", "EACCES"),
    "remove": ("EIO", "EACCES"),
    "listdir": ("EIO", "EACCES"),
    "stat": ("EIO", "EACCES"),
    "mkdir": ("ENOSPC", "EIO", "EACCES"),
    "close": ("ENOSPC", "EIO"),
    "read": ("EIO",),
    "link": ("ENOSPC", "EIO", "EACCES"),
}

p = argparse.ArgumentParser()
p.add_argument("directory")
p.add_argument("--scenario", default="save")
p.add_argument("--errnos", default="rotate")
p.add_argument("--every", type=int, default=1)
p.add_argument("--at", default=None)
p.add_argument("--start", type=int, default=0, help="skip the first N injections")
p.add_argument("--async", dest="async_save", action="store_true")
p.add_argument("--small", action="store_true", help="a small model that shares no files")
args = p.parse_args()

faulthandler.enable()  # a crash inside TensorFlow shows where it was
lib = ctypes.CDLL(None)
if not hasattr(lib, "fault_arm"):
    raise SystemExit("faults.py needs LD_PRELOAD=inject.so")
root = os.path.abspath(args.directory)
run_dir = os.path.join(root, "run")
ROTATE = args.errnos == "rotate"
ERRNOS = {
    name: getattr(errno, name)
    for name in ("ENOSPC,EIO,EACCES" if ROTATE else args.errnos).split(",")
}


def watch():
    lib.fault_watch(root.encode())


def arm(op, nth, err):
    lib.fault_arm(OPS.index(op), nth, err, 0)


def disarm():
    lib.fault_arm(-1, 0, 0, 0)
    lib.fault_watch(None)


def counts():
    return {op: lib.fault_count(i) for i, op in enumerate(OPS)}


keras.utils.set_random_seed(0)
model = compiled(shared=not args.small)
x, y = np.ones((16, 8), "float32"), np.zeros((16, 1), "float32")


def train():
    model.fit(x, y, epochs=1, batch_size=16, verbose=0)


def manager(**kwargs):
    return tfckpt.CheckpointManager(
        run_dir,
        model,
        keep_last=2,
        async_save=args.scenario == "async" or args.async_save,
        **kwargs,
    )


def state_of(record):
    """The digest a fresh model has after restoring `record`."""
    fresh = compiled(shared=not args.small)
    tfckpt.open(run_dir).restore(fresh, record, optimizer=fresh.optimizer)
    return support.digest(fresh)


saved_digest = {}  # checkpoint name -> digest of the state it was saved from
restored = {}  # the restore scenario's last restored checkpoint


def committed():
    return {r.name: r for r in tfckpt.open(run_dir).checkpoints}


def save_once(m):
    train()
    d = support.digest(model)
    try:
        record = m.save(epoch=int(model.optimizer.iterations))
        record = m.wait() or record  # and the deleted checkpoints' files are gone
    except tfckpt.CommittedWithError as e:
        saved_digest[e.record.name] = d  # committed all the same
        raise
    saved_digest[record.name] = d
    return record


def outcome_of(call):
    """Runs `call`; returns (error text or None, warnings)."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            call()
            error = None
        except Exception as e:
            error = e
    texts = [str(w.message) for w in caught if "tfckpt" in str(w.message)]
    return error, texts


def checks(before, error):
    """What must hold after an injected fault, whatever the outcome."""
    problems = []
    after = committed()
    for name, verdict in tfckpt.verify(run_dir):
        if verdict is not None:
            problems.append(f"verify: {name}: {verdict}")
    new = set(after) - set(before)
    lost = sorted(set(before) - set(after))
    # Only retention, after a new commit, deletes; and never the newest one.
    allowed = sorted(before)[:-1] if new and args.scenario in ("save", "async") else []
    if args.scenario == "prune":
        allowed = sorted(before)[:-2]  # prune(keep_last=2), complete or not
    for name in lost:
        if name not in allowed:
            problems.append(f"lost {name}")
    if args.scenario == "restore" and error is None and restored.get("name") != max(after):
        problems.append(f"restored {restored.get('name')}, not the newest {max(after)}")
    for name in after:
        if name in saved_digest and state_of(after[name]) != saved_digest[name]:
            problems.append(f"{name} does not hold the state it was saved from")
    if error is not None and not isinstance(error, tfckpt.CheckpointError):
        problems.append(f"raw error {type(error).__name__}")
    return problems, sorted(after)


def report(**fields):
    print(json.dumps(fields), flush=True)


def sweep(operation, prepare):
    """Counts `operation`'s calls, then fails each in turn."""
    prepare()
    watch()
    operation()
    total = counts()
    disarm()
    report(kind="counts", scenario=args.scenario, counts=total)
    index = 0
    for op in OPS:
        for nth in range(1, total[op] + 1, args.every):
            for ename, err in ERRNOS.items():
                if ename not in REAL_ERRNOS[op]:
                    continue
                if ROTATE and ename != REAL_ERRNOS[op][nth % len(REAL_ERRNOS[op])]:
                    continue
                index += 1
                if index <= args.start:
                    continue
                prepare()
                before = committed()
                watch()
                arm(op, nth, err)
                error, warned = outcome_of(operation)
                fired = bool(lib.fault_fired())
                disarm()
                problems, after = checks(before, error)
                # The next one, with no fault, succeeds.
                next_error, _ = outcome_of(operation)
                if next_error is not None:
                    problems.append(f"next attempt failed: {next_error}")
                message = f"{type(error).__name__}: {error}" if error else None
                said = [message or "", *warned]
                named = any(os.strerror(err) in text for text in said)
                report(
                    kind="injection",
                    index=index,
                    scenario=args.scenario,
                    op=op,
                    nth=nth,
                    errno=ename,
                    fired=fired,
                    error=message,
                    warnings=warned,
                    named=named,
                    committed=sorted(set(after) - set(before)),
                    problems=problems,
                )


if args.scenario in ("save", "async"):
    shutil.rmtree(run_dir, ignore_errors=True)
    holder = {}

    def prepare():
        if "m" not in holder:
            holder["m"] = manager()
        m = holder["m"]
        while len(committed()) < 2:
            save_once(m)

    def operation():
        save_once(holder["m"])

    sweep(operation, prepare)
    holder["m"].close()
elif args.scenario == "kill":
    digests = os.path.join(root, "digests.json")

    def persist(pending=None):
        with open(digests, "w") as f:
            json.dump({"saved": saved_digest, "pending": pending}, f)

    m = manager()
    while len(committed()) < 2:  # keep_last=2: the steady state of a run
        save_once(m)
    watch()
    save_once(m)  # counts the calls of a save like the next one
    total = counts()
    disarm()
    persist()
    op, nth = args.at.split(":")
    nth = (total[op] + 1) // 2 if nth == "middle" else int(nth)
    report(kind="counts", scenario="kill", counts=total, op=op, nth=nth)
    train()
    persist(pending=support.digest(model))
    watch()
    lib.fault_arm(OPS.index(op), nth, 0, 1)
    record = m.save(epoch=int(model.optimizer.iterations))
    record = m.wait() or record
    report(kind="survived", committed=record.name)  # the call never came
    m.close()
elif args.scenario == "restore":
    shutil.rmtree(run_dir, ignore_errors=True)
    with manager() as m:
        for _ in range(3):
            save_once(m)

    def operation():
        restored.clear()
        with manager() as m:
            record = m.restore()
        restored["name"] = record.name
        if support.digest(model) != saved_digest[record.name]:
            raise AssertionError(f"restored state is not {record.name}'s")

    sweep(operation, lambda: None)
elif args.scenario == "prune":
    shutil.rmtree(run_dir, ignore_errors=True)

    def prepare():
        with tfckpt.CheckpointManager(run_dir, model, keep_last=None) as m:
            while len(committed()) < 3:
                save_once(m)

    def operation():
        tfckpt.open(run_dir).prune(keep_last=2, dry_run=False)

    sweep(operation, prepare)
else:
    raise SystemExit(f"unknown scenario {args.scenario!r}")
