"""Every filesystem call fails once, in turn, with a real errno; and kill -9
lands at every call of a save.

`tests/faults/inject.c` is built here with the system C compiler and
preloaded (LD_PRELOAD) into a real training process, where it makes one libc
call (open, write, fsync, rename, remove, listdir, stat, mkdir, close) on the
run directory fail with ENOSPC, EIO or EACCES, or SIGKILL the process at that
call. `tests/scripts/faults.py` drives the operation and checks each outcome
(see its docstring). CI fails every second call once with one errno it can really
return; `-m soak` fails every call, each with every such errno, and kills at
every call.
"""

import json
import os
import subprocess
import sys

import keras
import numpy as np
import pytest
from scripts.fault_model import OPS, compiled
from support import digest, run_script, script_env

import tfckpt


def faults(inject_so, directory, *args, timeout=900):
    env = script_env(LD_PRELOAD=str(inject_so))
    return run_script("faults.py", directory, *args, timeout=timeout, env=env)


def sweep(inject_so, tmp_path, scenario, *args):
    """The injections of one sweep. A point where TensorFlow's own checkpoint
    reader crashes the process (SIGSEGV on an EIO it does not handle) is
    recorded as a crash, and the sweep goes on after it in a new process."""
    counts, injections, start = None, [], 0
    while True:
        proc = faults(inject_so, tmp_path, "--scenario", scenario, "--start", str(start), *args)
        rows = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
        counts = counts or rows[0]["counts"]
        injections += [r for r in rows if r["kind"] == "injection"]
        if proc.returncode == 0:
            return counts, injections
        # Only a crash inside TF's C++ checkpoint reader is TF's, not ours.
        assert proc.returncode == -11 and "py_checkpoint_reader" in proc.stderr, (
            proc.returncode,
            proc.stderr[-3000:],
        )
        start = (injections[-1]["index"] if injections else start) + 1
        injections.append({"kind": "crash", "index": start, "crashed": "TF checkpoint reader"})


def assert_kept_the_promise(injections, scenario):
    assert injections
    crashes = [r for r in injections if r["kind"] == "crash"]
    injections = [r for r in injections if r["kind"] == "injection"]
    for r in injections:
        where = f"{scenario}: {r['op']} #{r['nth']} {r['errno']}"
        assert r["problems"] == [], (where, r["error"], r["problems"])
        if r["error"] is not None:  # a clear tfckpt error, never a raw one
            assert r["error"].split(":")[0] in (
                "CheckpointWriteError",
                "CommittedWithError",
                "CheckpointReadError",
                "CheckpointError",
            ), (where, r["error"])
        if r["fired"] and r["op"] not in ("stat", "read") and (r["error"] or r["warnings"]):
            # The real OS error is named (TensorFlow drops the errno of a
            # failed stat in isdir/exists, and of some reads of an index).
            assert r["named"], (where, r["error"], r["warnings"])
    fired = sum(r["fired"] for r in injections)
    outcomes = {}
    for r in injections:
        key = (r["error"] or ("warning" if r["warnings"] else "no error")).split(":")[0]
        outcomes[key] = outcomes.get(key, 0) + 1
    crashed = f"; {len(crashes)} crashed inside TensorFlow's checkpoint reader" if crashes else ""
    print(f"\n{scenario}: {len(injections)} injections, {fired} fired; {outcomes}{crashed}")


SCENARIOS = ["save", "async", "restore", "prune"]
# CI sweeps every call of a sync save, a restore and a prune. An async save
# makes the same calls from its background thread (the soak sweep below
# covers them); its own error path, a failed background write reported at
# the next save, is tested in test_async.py.
CI_SCENARIOS = ["save", "restore", "prune"]


# Restores and prunes write no checkpoint: a small model (no shared files)
# keeps their sweeps short; saves are swept with files shared.
SMALL = {"restore": ("--small",), "prune": ("--small",)}


# CI fails every second call (1st, 3rd, ...; the errnos still rotate over all
# three), which keeps the suite within its time; `-m soak` fails every call.
CI_STRIDE = 2


@pytest.mark.parametrize("scenario", CI_SCENARIOS)
def test_every_second_call_fails_once_in_turn(inject_so, tmp_path, scenario):
    args = (*SMALL.get(scenario, ()), "--every", str(CI_STRIDE))
    counts, injections = sweep(inject_so, tmp_path, scenario, *args)
    # One injection per second call the operation makes on the run directory.
    assert len(injections) == sum(-(-n // CI_STRIDE) for n in counts.values())
    assert_kept_the_promise(injections, scenario)


@pytest.mark.soak
@pytest.mark.parametrize("scenario", CI_SCENARIOS)
def test_every_call_fails_once_in_turn(inject_so, tmp_path, scenario):
    counts, injections = sweep(inject_so, tmp_path, scenario, *SMALL.get(scenario, ()))
    # One injection per call the operation makes on the run directory.
    assert len(injections) == sum(counts.values())
    assert_kept_the_promise(injections, scenario)


@pytest.mark.soak
def test_every_call_of_an_async_save_fails_once_in_turn(inject_so, tmp_path):
    counts, injections = sweep(inject_so, tmp_path, "async")
    assert len(injections) == sum(counts.values())
    assert_kept_the_promise(injections, "async")


@pytest.mark.soak
@pytest.mark.parametrize("scenario", SCENARIOS)
def test_every_call_fails_with_every_errno(inject_so, tmp_path, scenario):
    _, injections = sweep(inject_so, tmp_path, scenario, "--errnos", "ENOSPC,EIO,EACCES")
    assert_kept_the_promise(injections, scenario)


def kill_and_restart(inject_so, tmp_path, op, nth, *args):
    proc = faults(inject_so, tmp_path, "--scenario", "kill", "--at", f"{op}:{nth}", *args)
    header = json.loads(proc.stdout.splitlines()[0])
    if proc.returncode == 0:  # fewer calls than nth
        return header, None
    assert proc.returncode == -9, proc.stderr[-3000:]
    digests = json.loads((tmp_path / "digests.json").read_text())
    run_dir = tmp_path / "run"
    before = max(digests["saved"])
    # The restart: a new writer restores the newest committed checkpoint.
    keras.utils.set_random_seed(0)
    model = compiled(shared="--small" not in args)
    with tfckpt.CheckpointManager(str(run_dir), model, keep_last=2) as manager:
        leftovers = [
            n for n in os.listdir(run_dir) if n.startswith((".tmp-", ".trash-", "checkpoint.tmp"))
        ]
        assert leftovers == []  # the writer cleaned up
        record = manager.restore()
        assert record.name >= before  # nothing committed was lost
        expected = digests["saved"].get(record.name, digests["pending"])
        assert digest(model) == expected, (op, nth, record.name)
        assert all(problem is None for _, problem in tfckpt.verify(str(run_dir)))
        model.fit(np.ones((16, 8)), np.zeros((16, 1)), verbose=0)
        assert manager.save(epoch=99) is not None  # and the next save works
    return header, record.name


@pytest.mark.parametrize("op", OPS)
def test_kill_9_at_a_call_of_a_save(inject_so, tmp_path, op):
    header, restored = kill_and_restart(inject_so, tmp_path, op, "middle")
    assert header["counts"][op] > 0 and restored is not None


@pytest.mark.soak
@pytest.mark.parametrize("async_save", [False, True], ids=["sync", "async"])
def test_kill_9_at_every_call_of_a_save(inject_so, tmp_path, async_save):
    extra = ["--async"] if async_save else []
    header, _ = kill_and_restart(inject_so, tmp_path / "count", "open", 1, *extra)
    points = [(op, n) for op in OPS for n in range(1, header["counts"][op] + 1)]
    for i, (op, n) in enumerate(points):
        directory = tmp_path / f"{i}"
        directory.mkdir()
        kill_and_restart(inject_so, directory, op, n, *extra)
    print(f"\nkill -9 at {len(points)} calls of a save ({'async' if async_save else 'sync'})")


def test_the_shim_really_fails_the_call(inject_so, tmp_path):
    # A check of the tool itself: an armed write really fails with ENOSPC in
    # plain Python, and calls outside the watched directory are untouched.
    code = f"""
import ctypes, errno, os
lib = ctypes.CDLL(None)
lib.fault_watch({str(tmp_path)!r}.encode())
lib.fault_arm(1, 1, errno.ENOSPC, 0)
fd = os.open({str(tmp_path / "f")!r}, os.O_WRONLY | os.O_CREAT)
try:
    os.write(fd, b"x")
except OSError as e:
    print(e.errno == errno.ENOSPC, lib.fault_fired())
os.write(fd, b"y")
os.close(fd)
print(open({str(tmp_path / "f")!r}).read(), lib.fault_count(1))
"""
    proc = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        env=dict(os.environ, LD_PRELOAD=str(inject_so)),
        timeout=60,
    )
    assert proc.stdout.split() == ["True", "1", "y", "2"], proc.stderr
