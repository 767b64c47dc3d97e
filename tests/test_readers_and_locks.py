"""Readers never write into a run directory and never take a deletion for
damage; the writer lock on storage without flock (a lease) and uncommitted
leftovers there (`ram://` stands in for an object store: no directory rename)."""

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
import warnings

import numpy as np
import pytest
import tensorflow as tf
from support import fill, make_data, make_model, script_env, small_model

import tfckpt
from tfckpt.store import lock

# A writer that saves as fast as it can, keeping only the newest checkpoint:
# every save deletes the previous one while readers read.
WRITER = r"""
import os, sys, time
os.environ["TF_CPP_MIN_LOG_LEVEL"] = "3"
import keras, tfckpt
keras.utils.set_random_seed(0)
model = keras.Sequential([keras.Input((8,)), keras.layers.Dense(16, activation="relu"),
                          keras.layers.Dense(1, activation="sigmoid")])
model.compile(keras.optimizers.Adam(1e-2), "binary_crossentropy")
model.optimizer.build(model.trainable_variables)
manager = tfckpt.CheckpointManager(sys.argv[1], model, keep_last=1, fsync=False)
step = 0
while True:
    step += 1
    for v in model.weights:
        v.assign(v + 1.0)
    manager.save(step, epoch=step)
    if step == 1:
        print("saving", flush=True)
"""


def listing(directory):
    """Every path under `directory` with its size and modification time."""
    out = {}
    for root, dirs, files in os.walk(directory):
        for name in dirs + files:
            path = os.path.join(root, name)
            st = os.stat(path)
            out[os.path.relpath(path, directory)] = (st.st_size, st.st_mtime_ns)
    return out


def tfckpt_warnings(caught):
    return [str(w.message) for w in caught if "tfckpt" in str(w.message)]


def damage_markers(directory):
    return [e for e in os.listdir(directory) if e.startswith(".damaged-")]


# ---- readers under a live writer --------------------------------------------


def test_readers_never_mistake_retention_deletes_for_damage(tmp_path):
    d = tmp_path / "run"
    script = tmp_path / "writer.py"
    script.write_text(WRITER)
    writer = subprocess.Popen(
        [sys.executable, str(script), str(d)],
        env=script_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    child = tfckpt.CheckpointManager(str(tmp_path / "child"), make_model())
    restores, first_seq = 0, None
    try:
        assert writer.stdout.readline().strip() == "saving", writer.stderr.read()
        first_seq = tfckpt.open(str(d)).latest.seq
        initial = [w.numpy() for w in make_model().weights]  # the writer's, before step 1
        model, trained = make_model(seed=3), make_model(seed=4)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            deadline = time.monotonic() + 8
            while time.monotonic() < deadline:
                record = tfckpt.restore(model, str(d))
                # Each restore is whole: the writer adds 1.0 per step to every weight.
                for w, w0 in zip(model.weights, initial):
                    np.testing.assert_allclose(w.numpy(), w0 + record.step, atol=1e-3)
                tfckpt.open(str(d)).restore(trained, optimizer=trained.optimizer)
                child.init_from(str(d))
                restores += 3
                assert damage_markers(d) == []
                assert writer.poll() is None, writer.stderr.read()
        messages = [str(w.message) for w in caught]
        assert not [m for m in messages if "skipping" in m or "damaged" in m], messages
    finally:
        child.close()
        writer.send_signal(signal.SIGKILL)
        writer.wait()
    run = tfckpt.open(str(d))
    assert damage_markers(d) == [] and run.problems == []
    # The writer committed (and retention deleted) many checkpoints meanwhile.
    assert run.latest.seq - first_seq > 20 and restores > 20
    print(
        f"\nreaders: {restores} restores while the writer committed and deleted "
        f"{run.latest.seq - first_seq} checkpoints"
    )
    # A kill -9 of the writer costs nothing: the restart takes the directory.
    with tfckpt.CheckpointManager(str(d), make_model(), keep_last=1) as manager:
        assert manager.restore().seq == run.latest.seq


@pytest.fixture(scope="module")
def three_epochs(tmp_path_factory):
    d = tmp_path_factory.mktemp("pristine") / "run"
    model = make_model()
    model.optimizer.build(model.trainable_variables)
    with tfckpt.CheckpointManager(str(d), model, keep_last=None) as manager:
        for epoch in (1, 2, 3):
            fill(model, epoch)
            manager.save(epoch, epoch=epoch)
    return d


def test_readers_fall_back_over_damage_without_writing(tmp_path, three_epochs):
    import shutil

    d = tmp_path / "run"
    shutil.copytree(three_epochs, d)
    data = d / "ckpt-000003" / "ckpt.data-00000-of-00001"
    raw = bytearray(data.read_bytes())
    raw[len(raw) // 2] ^= 0xFF  # same size: only a checksum tells
    data.write_bytes(bytes(raw))
    before = listing(d)

    readers = {
        "tfckpt.restore": lambda m: tfckpt.restore(m, str(d)),
        "Run.restore": lambda m: tfckpt.open(str(d)).restore(m),
        "init_from": lambda m: tfckpt.CheckpointManager(str(tmp_path / "child"), m).init_from(
            str(d)
        )[0],
    }
    for name, read in readers.items():
        model = make_model(seed=5)
        with pytest.warns(UserWarning, match="skipping ckpt-000003") as caught:
            record = read(model)
        assert record.epoch == 2, name
        assert all(np.all(w.numpy() == 2.0) for w in model.weights), name
        assert len([w for w in caught if "ckpt-000003" in str(w.message)]) == 1, name
        assert listing(d) == before, name  # not a byte written, no marker
    # The writer (it holds the lock) does mark it: the next save must not take
    # the damaged one for the newest.
    with tfckpt.CheckpointManager(str(d), make_model(seed=5), keep_last=None) as manager:
        with pytest.warns(UserWarning, match="skipping ckpt-000003"):
            assert manager.restore().epoch == 2
    assert damage_markers(d) == [".damaged-ckpt-000003"]
    assert tfckpt.open(str(d)).latest.epoch == 2


# ---- object stores: uncommitted leftovers ---------------------------------------


def ram_dir():
    return f"ram://tfckpt-readers-locks-{uuid.uuid4().hex}/run"


@pytest.fixture
def short_lease(monkeypatch):
    monkeypatch.setenv(lock.LEASE_ENV, "1.5")
    monkeypatch.setenv(lock.SETTLE_ENV, "0.05")


def unpublish(directory, name):
    """What a crash inside `_publish` leaves on an object store: the checkpoint's
    files moved to their final directory, the manifest (moved last) not."""
    tf.io.gfile.remove(f"{directory}/{name}/manifest.json")
    assert tf.io.gfile.listdir(f"{directory}/{name}")  # the data files are there


def test_unpublished_first_checkpoint_is_a_leftover_not_damage(short_lease):
    d = ram_dir()
    with tfckpt.CheckpointManager(d, small_model(1.0)) as manager:
        manager.save(epoch=1)
    unpublish(d, "ckpt-000001")

    run = tfckpt.open(d)
    assert run.checkpoints == [] and run.problems == [] and tfckpt.verify(d) == []
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with pytest.raises(tfckpt.CheckpointNotFoundError, match="holds no committed checkpoint"):
            tfckpt.restore(small_model(), d)
        model = small_model(7.0)
        with tfckpt.CheckpointManager(d, model) as manager:  # the restart
            assert manager.restore() is None  # nothing was ever committed: a fresh start
            record = manager.save(epoch=1)
    assert tfckpt_warnings(caught) == []  # not a word about damage
    assert record.name == "ckpt-000002"  # the leftover's number is not reused
    assert sorted(tf.io.gfile.listdir(f"{d}/ckpt-000002")) == sorted(
        [*record.manifest["files"], "manifest.json"]
    )
    other = small_model()
    assert tfckpt.restore(other, d).name == "ckpt-000002"
    assert all(np.all(w.numpy() == 7.0) for w in other.weights)
    assert tfckpt.verify(d) == [("ckpt-000002", None)]


def test_unpublished_newest_is_ignored_and_the_committed_one_restored(short_lease):
    d = ram_dir()
    with tfckpt.CheckpointManager(d, small_model(1.0), keep_last=None) as manager:
        manager.save(epoch=1)
        fill(manager.model, 2.0)
        manager.save(epoch=2)
    unpublish(d, "ckpt-000002")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model = small_model()
        with tfckpt.CheckpointManager(d, model, keep_last=None) as manager:
            assert manager.restore().name == "ckpt-000001"
            assert all(np.all(w.numpy() == 1.0) for w in model.weights)
            assert manager.save(epoch=2).name == "ckpt-000003"
    assert tfckpt_warnings(caught) == []
    assert [r.name for r in tfckpt.open(d).checkpoints] == ["ckpt-000001", "ckpt-000003"]


# ---- object stores: the lease lock ----------------------------------------------


def write_lock(directory, **info):
    tf.io.gfile.makedirs(directory)
    with tf.io.gfile.GFile(f"{directory}/.lock.new", "wb") as f:
        f.write(json.dumps(info).encode())
    tf.io.gfile.rename(f"{directory}/.lock.new", f"{directory}/.lock", overwrite=True)


def test_an_expired_lease_is_taken_over_whatever_its_pid_and_host(short_lease):
    now = time.time()
    dead = [
        # A hard-killed writer on another host: it never removed its lease.
        {
            "pid": 4242,
            "host": "another-host",
            "since": now - 600,
            "expires": now - 1,
            "token": "x",
            "lease": 1.5,
        },
        # PID 1 of a killed container on this host name (pid 1 is alive here too).
        {
            "pid": 1,
            "host": socket.gethostname(),
            "since": now - 600,
            "expires": now - 1,
            "token": "y",
            "lease": 1.5,
        },
        # A lock file as older versions wrote it (no expiry), left hours ago by pid 1.
        {"pid": 1, "host": socket.gethostname(), "since": now - 3 * 3600},
    ]
    for info in dead:
        d = ram_dir()
        write_lock(d, **info)
        with tfckpt.CheckpointManager(d, small_model()) as manager:
            manager.save(epoch=1)
            assert json.loads(tf.io.gfile.GFile(f"{d}/.lock", "rb").read())["pid"] == os.getpid()
        assert not tf.io.gfile.exists(f"{d}/.lock")  # released


def test_a_live_lease_blocks_and_a_dead_holder_expires(short_lease):
    d = ram_dir()
    tf.io.gfile.makedirs(d)
    other = lock.Lease(d)  # another writer (in its own process, on its own host)
    other.acquire()
    try:
        time.sleep(1.6)  # longer than the lease: only its renewals keep it
        # Its next renewal tells the newcomer that it is alive.
        with pytest.raises(
            tfckpt.DirectoryLockedError, match=rf"pid {os.getpid()} on host .*lease"
        ):
            tfckpt.CheckpointManager(d, small_model())
        # The holder dies hard: its renewals stop, its lease file stays.
        other.stop_renewing()
        assert tf.io.gfile.exists(f"{d}/.lock")
        started = time.monotonic()
        with tfckpt.CheckpointManager(d, small_model()) as manager:
            assert time.monotonic() - started < 6.0  # about the lease (1.5 s), then taken
            time.sleep(2.0)  # the new holder renews its own lease
            with pytest.raises(tfckpt.DirectoryLockedError):
                lock.Lease(d).acquire()
            manager.save(epoch=1)
    finally:
        other.release()
    assert not tf.io.gfile.exists(f"{d}/.lock")


def test_racing_writers_one_wins(short_lease):
    for _ in range(5):
        d = ram_dir()
        tf.io.gfile.makedirs(d)
        contenders = [lock.Lease(d) for _ in range(4)]
        barrier = threading.Barrier(len(contenders))
        won, lost = [], []

        def take(lease, barrier=barrier, won=won, lost=lost):
            barrier.wait()
            try:
                lease.acquire()
                won.append(lease)
            except tfckpt.DirectoryLockedError:
                lost.append(lease)

        threads = [threading.Thread(target=take, args=(c,)) for c in contenders]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        try:
            assert len(won) == 1 and len(lost) == 3
        finally:
            for lease in won:
                lease.release()


def test_a_holder_that_lost_its_lease_never_overwrites_the_new_one(short_lease):
    d = ram_dir()
    tf.io.gfile.makedirs(d)
    stalled = lock.Lease(d)
    stalled.acquire()
    try:
        # Its renewals did not reach the storage for longer than the lease
        # (e.g. a partition): another writer took the directory over meanwhile.
        write_lock(
            d,
            pid=4242,
            host="another-host",
            since=time.time(),
            expires=time.time() + 60,
            token="newcomer",
            lease=60,
        )
        with pytest.warns(UserWarning, match="lost the writer lease"):
            deadline = time.monotonic() + 3
            while stalled.lost is None and time.monotonic() < deadline:
                time.sleep(0.05)
        assert stalled.lost is not None
    finally:
        stalled.release()
    info = json.loads(tf.io.gfile.GFile(f"{d}/.lock", "rb").read())
    assert info["token"] == "newcomer"  # neither renewed over nor removed


def test_a_manager_that_lost_its_lease_stops_saving(short_lease):
    d = ram_dir()
    model = small_model()
    manager = tfckpt.CheckpointManager(d, model, keep_last=None)
    try:
        manager.save(epoch=1)
        write_lock(
            d,
            pid=4242,
            host="another-host",
            since=time.time(),
            expires=time.time() + 60,
            token="newcomer",
            lease=60,
        )
        with pytest.warns(UserWarning, match="lost the writer lease"):
            deadline = time.monotonic() + 3
            while manager._lock.lost is None and time.monotonic() < deadline:
                time.sleep(0.05)
        with pytest.raises(tfckpt.CheckpointWriteError, match="Not saving into .*another-host"):
            manager.save(epoch=2)
        assert [r.epoch for r in tfckpt.open(d).checkpoints] == [1]
    finally:
        manager.close()


def test_a_second_writer_in_the_same_process_is_refused_naming_the_first(tmp_path):
    d = str(tmp_path / "run")
    first = tfckpt.CheckpointManager(d, small_model(), keep_last=None)
    first.save(epoch=1)
    with pytest.raises(
        tfckpt.DirectoryLockedError,
        match=r"open for writing in this process \(pid \d+\) by a CheckpointManager \(or "
        r"fit\) started at .*test_readers_and_locks\.py:\d+\. Two writers would interleave",
    ):
        tfckpt.CheckpointManager(d, small_model())
    # A notebook cell run twice: the second fit's callback is refused the same way.
    with pytest.raises(tfckpt.DirectoryLockedError, match="open for writing in this process"):
        make_model().fit(
            *make_data(), epochs=1, verbose=0, callbacks=[tfckpt.CheckpointCallback(d)]
        )
    first.save(epoch=2)
    assert [r.epoch for r in first.checkpoints] == [1, 2]  # nothing of another writer
    first.close()
    with tfckpt.CheckpointManager(d, small_model(), keep_last=None) as second:  # closed: free
        second.save(epoch=3)
    # One dropped without close(), even in a reference cycle, is taken over.
    dropped = tfckpt.CheckpointManager(d, small_model(), keep_last=None)
    dropped.save(epoch=4)
    dropped.itself = dropped
    del dropped
    with tfckpt.CheckpointManager(d, small_model(), keep_last=None) as third:
        assert [r.epoch for r in third.checkpoints] == [1, 2, 3, 4]
