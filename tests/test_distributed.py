"""tf.distribute: the callback under MirroredStrategy (two logical CPUs), and
the manager in a MultiWorkerMirroredStrategy custom loop (two worker
processes on 127.0.0.1)."""

import json
import socket

import keras
import numpy as np
import pytest
import tensorflow as tf
from support import run_script, script_env, start_script

import tfckpt


def plain_model():
    return keras.Sequential(
        [
            keras.Input((10,)),
            keras.layers.Dense(32, activation="relu"),
            keras.layers.Dropout(0.2),
            keras.layers.Dense(1, activation="sigmoid"),
        ]
    )


def checkpoint_weights(record):
    """The model weights in a checkpoint, read by plain TF into a plain model."""
    model = plain_model()
    tf.train.Checkpoint(model=model).read(record.path).expect_partial()
    return [w.numpy() for w in model.weights]


def mirrored(tmp_path, *args):
    out = tmp_path / "out.npz"
    out.unlink(missing_ok=True)
    proc = run_script("mirrored.py", tmp_path / "run", *args, "--out", out)
    if proc.returncode != 0:
        return proc.returncode, None
    return 0, dict(np.load(out))


@pytest.mark.parametrize("async_save", [False, True], ids=["sync", "async"])
def test_mirrored_kill_and_resume(tmp_path, async_save):
    extra = ["--async-save"] if async_save else []
    rc, _ = mirrored(tmp_path, "--epochs", 4, "--kill-at-epoch", 2, *extra)
    assert rc == -9
    latest = tfckpt.open(str(tmp_path / "run")).latest
    # Rerun with as many epochs as are done: it restores and trains nothing.
    rc, restored = mirrored(tmp_path, "--epochs", latest.epoch, *extra)
    assert rc == 0 and int(restored["restored_step"]) == latest.step
    for i, expected in enumerate(checkpoint_weights(latest)):
        np.testing.assert_array_equal(restored[f"w{i}"], expected)
    rc, done = mirrored(tmp_path, "--epochs", 4, *extra)
    assert rc == 0 and int(done["restored_step"]) == latest.step
    run = tfckpt.open(str(tmp_path / "run"))
    assert run.latest.epoch == 4 and run.history["epoch"] == [1, 2, 3, 4]
    for i, expected in enumerate(checkpoint_weights(run.latest)):
        np.testing.assert_array_equal(done[f"w{i}"], expected)


def free_ports(n):
    sockets = [socket.socket() for _ in range(n)]
    for s in sockets:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


def two_workers(tmp_path, name, *args):
    """Runs both workers of a MWMS custom loop; returns their exit codes,
    outputs and results (None where a worker did not finish)."""
    ports = ",".join(map(str, free_ports(2)))
    procs, scratch = [], []
    for index in range(2):
        tmpdir = tmp_path / f"tmp-{name}-{index}"
        tmpdir.mkdir(exist_ok=True)
        scratch.append(tmpdir)
        out = tmp_path / f"{name}-{index}.json"
        out.unlink(missing_ok=True)
        procs.append(
            start_script(
                "mwms_train.py",
                tmp_path / name,
                "--index",
                index,
                "--ports",
                ports,
                "--out",
                out,
                *args,
                env=script_env(TMPDIR=tmpdir),
            )
        )
    results = []
    for index, proc in enumerate(procs):
        stdout, stderr = proc.communicate(timeout=240)
        out = tmp_path / f"{name}-{index}.json"
        results.append(
            (proc.returncode, stdout, stderr, json.loads(out.read_text()) if out.exists() else None)
        )
    # A non-chief worker's scratch copies are gone; nothing but committed
    # checkpoints is left in the run directory.
    for tmpdir in scratch:
        assert list(tmpdir.glob("tfckpt-*")) == []
    leftovers = [
        p.name
        for p in (tmp_path / name).iterdir()
        if not (p.name.startswith("ckpt-") or p.name in ("checkpoint", ".lock", ".finished"))
    ]
    assert leftovers == []
    return results


def restored_steps(results):
    return [
        int(line.split()[1])
        for _, stdout, _, _ in results
        for line in stdout.splitlines()
        if line.startswith("restored")
    ]


def test_mwms_custom_loop_killed_and_resumed(tmp_path):
    reference = two_workers(tmp_path, "ref", "--steps", 12)
    assert [r[0] for r in reference] == [0, 0], reference[0][2][-2000:]
    killed = two_workers(tmp_path, "run", "--steps", 12, "--kill-at-step", 7)
    # Each worker SIGKILLs itself before step 8; one that is still finishing
    # step 7's collective when its peer dies may fail with an error instead.
    codes = [r[0] for r in killed]
    assert -9 in codes and all(code in (-9, 1) for code in codes), codes
    assert [c.step for c in tfckpt.open(str(tmp_path / "run")).checkpoints] == [4]
    resumed = two_workers(tmp_path, "run", "--steps", 12)
    assert [r[0] for r in resumed] == [0, 0], resumed[0][2][-2000:]
    assert restored_steps(resumed) == [4, 4]  # both continue from the same step
    w0, w1 = resumed[0][3]["weights"], resumed[1][3]["weights"]
    assert w0 == w1 == reference[0][3]["weights"]  # as if never interrupted
    assert [c.step for c in tfckpt.open(str(tmp_path / "run")).checkpoints] == [8, 12]


def test_mwms_sigterm_to_one_worker_saves_all_at_the_same_step(tmp_path):
    preempted = two_workers(tmp_path, "run", "--steps", 12, "--term-at-step", 6)
    assert [r[0] for r in preempted] == [42, 42], preempted[1][2][-2000:]
    # Each worker's last trained step is the checkpoint's.
    last = [
        max(int(line.split()[1]) for line in stdout.splitlines() if line.startswith("step"))
        for _, stdout, _, _ in preempted
    ]
    assert last == [7, 7]
    assert tfckpt.open(str(tmp_path / "run")).latest.step == 7
    resumed = two_workers(tmp_path, "run", "--steps", 12)
    assert [r[0] for r in resumed] == [0, 0]
    assert restored_steps(resumed) == [7, 7]
    assert resumed[0][3]["weights"] == resumed[1][3]["weights"]
