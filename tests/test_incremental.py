"""Incremental checkpoints: data files whose bytes did not change are
hard-linked to the newest checkpoint's, and every checkpoint stays a complete,
independent TF checkpoint."""

import json
import os
import stat
import subprocess
import sys
import warnings

import keras
import numpy as np
import pytest
import tensorflow as tf
from support import ROOT, rot, script_env

import tfckpt
from tfckpt.errors import NoIntactCheckpointError


def finetune_model(seed=0):
    """A frozen "backbone" (two 4 MiB kernels) under a small trainable head
    with BatchNorm (non-trainable statistics that change)."""
    keras.utils.set_random_seed(seed)
    model = keras.Sequential(
        [
            keras.Input((1024,)),
            keras.layers.Dense(1024, activation="relu", trainable=False),
            keras.layers.Dense(1024, activation="relu", trainable=False),
            keras.layers.Dense(32, activation="relu"),
            keras.layers.BatchNormalization(),
            keras.layers.Dense(1),
        ]
    )
    model.compile(keras.optimizers.Adam(1e-2), "mse")
    return model


def data(n=64):
    rng = np.random.default_rng(0)
    return rng.normal(size=(n, 1024)).astype("float32"), rng.normal(size=(n, 1)).astype("float32")


def files_of(record):
    return {f: os.stat(os.path.join(record.directory, f)) for f in record.manifest["files"]}


def changed_bytes(a, b):
    """Bytes of the tensors whose values differ between checkpoints a and b."""
    ra, rb = tf.train.load_checkpoint(a.path), tf.train.load_checkpoint(b.path)
    total = 0
    for name in ra.get_variable_to_shape_map():
        if name == "_CHECKPOINTABLE_OBJECT_GRAPH":
            continue
        x, y = ra.get_tensor(name), rb.get_tensor(name)
        if x.tobytes() != y.tobytes():
            total += np.asarray(y).nbytes
    return total


def fresh_read(model_fn, path):
    """Restores `path` into a fresh model with plain TF; returns the model."""
    model = model_fn(seed=1)
    model.optimizer.build(model.trainable_variables)
    tf.train.Checkpoint(model=model, optimizer=model.optimizer).read(
        path
    ).assert_existing_objects_matched()
    return model


def weights_of(model):
    return [v.numpy().copy() for v in model.weights + model.optimizer.variables]


def test_unchanged_tensors_are_linked_and_each_checkpoint_is_plain_tf(tmp_path):
    model = finetune_model()
    x, y = data()
    states = []

    class Snapshot(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            states.append(weights_of(model))

    cb = tfckpt.CheckpointCallback(tmp_path, keep_last=None, monitor=None, verbose=0)
    model.fit(x, y, epochs=4, batch_size=16, verbose=0, callbacks=[cb, Snapshot()])
    records = tfckpt.open(tmp_path).checkpoints
    assert [r.epoch for r in records] == [1, 2, 3, 4]
    first = files_of(records[0])
    for earlier, record in zip(records, records[1:]):
        stats = files_of(record)
        linked = [f for f, e in record.manifest["files"].items() if e.get("shared")]
        # Both frozen kernels are one file each, the same inode as the first
        # checkpoint's; what changed was written anew.
        assert len(linked) == 2
        for f in linked:
            assert stats[f].st_ino == first[f].st_ino
        written = sum(
            e["size"]
            for f, e in record.manifest["files"].items()
            if f not in linked and ".data-" in f
        )
        changed = changed_bytes(earlier, record)
        assert 0 < changed <= written <= 1.25 * changed, (written, changed)
    # Plain TF finds the newest and reads every checkpoint, exactly.
    assert tf.train.latest_checkpoint(str(tmp_path)) == records[-1].path
    for record, state in zip(records, states):
        restored = fresh_read(finetune_model, record.path)
        for a, b in zip(weights_of(restored), state):
            np.testing.assert_array_equal(a, b)
    run = tfckpt.open(tmp_path)
    assert run.shared_bytes(records[0]) == run.shared_bytes(records[-1]) == 2 * 4 * 2**20


def test_deleting_any_checkpoint_never_breaks_another(tmp_path):
    model = finetune_model()
    x, y = data()
    cb = tfckpt.CheckpointCallback(tmp_path, keep_last=2, monitor=None, verbose=0)
    model.fit(x, y, epochs=4, batch_size=16, verbose=0, callbacks=[cb])
    run = tfckpt.open(tmp_path)
    # Retention deleted ckpt 1 and 2: the first holder of the shared files.
    assert [r.epoch for r in run.checkpoints] == [3, 4]
    assert all(problem is None for _, problem in tfckpt.verify(tmp_path))
    # A prune of the older of the two: the newest stays intact and readable.
    report = run.prune(keep_last=1, dry_run=False)
    assert [r.epoch for r in report.deleted] == [3]
    # It freed its own bytes only: the frozen kernels stay, linked by epoch 4.
    assert report.bytes_freed == report.deleted[0].size - 8 * 2**20
    assert [problem for _, problem in tfckpt.verify(tmp_path)] == [None]
    newest = run.latest
    fresh_read(finetune_model, newest.path)
    # Only links remain: the shared files are this checkpoint's own now.
    assert run.shared_bytes(newest) == 0
    # Training on (a completed fit trains on) links to what is left.
    cb = tfckpt.CheckpointCallback(tmp_path, keep_last=None, monitor=None, verbose=0)
    model.fit(x, y, epochs=2, batch_size=16, verbose=0, callbacks=[cb])
    records = run.checkpoints
    assert [r.epoch for r in records] == [4, 5, 6]
    assert all(
        e.get("shared") == newest.name
        for e in records[1].manifest["files"].values()
        if e.get("shared")
    )
    assert run.shared_bytes(newest) == 8 * 2**20
    assert all(problem is None for _, problem in tfckpt.verify(tmp_path))


def test_a_damaged_shared_file_is_damage_of_every_checkpoint_sharing_it(tmp_path):
    x, y = data()
    model = finetune_model()
    cb = tfckpt.CheckpointCallback(tmp_path, keep_last=None, monitor=None, verbose=0)
    model.fit(x, y, epochs=1, batch_size=16, verbose=0, callbacks=[cb])
    # New frozen weights (a backbone loaded after epoch 1): ckpt 1 shares
    # nothing with the later epochs, which share the new backbone's files.
    for layer in model.layers[:2]:
        layer.kernel.assign(layer.kernel * 0.5)
    cb = tfckpt.CheckpointCallback(tmp_path, keep_last=None, monitor=None, verbose=0)
    model.fit(x, y, epochs=3, batch_size=16, verbose=0, callbacks=[cb])  # 3 more
    records = tfckpt.open(tmp_path).checkpoints
    assert [r.epoch for r in records] == [1, 2, 3, 4]
    shared = [f for f, e in records[-1].manifest["files"].items() if e.get("shared")]
    assert shared
    # Flip a byte in the middle of a shared file, through the newest checkpoint.
    path = os.path.join(records[-1].directory, shared[0])
    with open(path, "r+b") as f:
        f.seek(os.path.getsize(path) // 2)
        byte = f.read(1)
        f.seek(-1, os.SEEK_CUR)
        f.write(bytes([byte[0] ^ 0xFF]))
    problems = dict(tfckpt.verify(tmp_path))
    assert problems[records[0].name] is None  # it has the old backbone's files
    for record in records[1:]:  # epochs 2-4 share the file: all damaged
        assert "does not match" in problems[record.name]
        assert shared[0] in problems[record.name]
        assert "shared (hard-linked) with" in problems[record.name]
    # The fallback skips every checkpoint that shares the damaged file.
    fresh = finetune_model(seed=1)
    fresh.optimizer.build(fresh.trainable_variables)
    with tfckpt.CheckpointManager(tmp_path, fresh, monitor=None, keep_last=None) as manager:
        with pytest.warns(UserWarning, match="damaged"):
            restored = manager.restore()
    assert restored.name == records[0].name
    # With no intact checkpoint left, restoring raises; nothing is deleted.
    with open(os.path.join(records[0].directory, "ckpt.index"), "r+b") as f:
        f.write(b"\0" * 16)
    with tfckpt.CheckpointManager(tmp_path, fresh, monitor=None, keep_last=None) as manager:
        with pytest.raises(NoIntactCheckpointError):
            manager.restore()
    assert all(os.path.isdir(r.directory) for r in records)


def test_kill_9_while_a_save_links_earlier_files(tmp_path, inject_so):
    # The fault shim SIGKILLs the process at the first and at the second
    # link(2) call of a save that shares files; the rerun restores the newest
    # committed checkpoint and the files it shares are intact.
    from test_faults import kill_and_restart

    for nth in (1, 2):
        directory = tmp_path / f"link{nth}"
        directory.mkdir()
        header, restored = kill_and_restart(inject_so, directory, "link", nth)
        assert header["counts"]["link"] >= 2 and restored is not None


def test_full_checkpoints_where_there_are_no_hard_links(tmp_path):
    model = finetune_model()
    x, y = data()
    # ram:// has no hard links: full checkpoints, said once.
    with pytest.warns(UserWarning, match="saving full checkpoints"):
        cb = tfckpt.CheckpointCallback("ram://inc-full", keep_last=None, monitor=None, verbose=0)
        model.fit(x, y, epochs=2, batch_size=16, verbose=0, callbacks=[cb])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        cb = tfckpt.CheckpointCallback("ram://inc-full", keep_last=None, monitor=None, verbose=0)
        model.fit(x, y, epochs=3, batch_size=16, verbose=0, callbacks=[cb])
    assert not [w for w in caught if "full checkpoints" in str(w.message)]  # said once
    records = tfckpt.open("ram://inc-full").checkpoints
    assert not any(e.get("shared") for r in records for e in r.manifest["files"].values())
    # incremental=False: one data file, as TF writes it by default.
    cb = tfckpt.CheckpointCallback(tmp_path, incremental=False, monitor=None, verbose=0)
    model.fit(x, y, epochs=2, batch_size=16, verbose=0, callbacks=[cb])
    files = tfckpt.open(tmp_path).latest.manifest["files"]
    assert [f for f in files if ".data-" in f] == ["ckpt.data-00000-of-00001"]
    with pytest.raises(TypeError, match="`incremental` must be True or False. Received: 'yes'"):
        tfckpt.CheckpointCallback(tmp_path, incremental="yes")


def test_a_filesystem_without_links_falls_back_to_full_copies(tmp_path, inject_so):
    # link(2) failing with EPERM (FAT, some network filesystems): the save
    # keeps its own copies, says so once, and saves full checkpoints on.
    code = f"""
import ctypes, errno, os, sys, warnings
sys.path.insert(0, {str(ROOT / "tests")!r})
from test_incremental import finetune_model, data
import tfckpt
lib = ctypes.CDLL(None)
lib.fault_watch({str(tmp_path)!r}.encode())
model, (x, y) = finetune_model(), data()
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    with tfckpt.CheckpointManager({str(tmp_path)!r}, model, keep_last=None) as m:
        for epoch in range(1, 4):
            model.fit(x, y, verbose=0)
            lib.fault_arm(10, 1, errno.EPERM, 0)
            m.save(epoch=epoch)
told = [str(w.message) for w in caught if "hard links" in str(w.message)]
records = tfckpt.open({str(tmp_path)!r}).checkpoints
print(len(told), [sum(bool(e.get("shared")) for e in r.manifest["files"].values()) for r in records])
print([p for _, p in tfckpt.verify({str(tmp_path)!r})])
"""
    proc = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        env=script_env(LD_PRELOAD=str(inject_so)),
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = proc.stdout.splitlines()
    assert lines[-2] == "1 [0, 0, 0]"
    assert lines[-1] == "[None, None, None]"


def test_cli_shows_own_and_shared_bytes(tmp_path):
    model = finetune_model()
    x, y = data()
    cb = tfckpt.CheckpointCallback(tmp_path, keep_last=None, monitor=None, verbose=0)
    model.fit(x, y, epochs=2, batch_size=16, verbose=0, callbacks=[cb])
    rows = json.loads(run_cli("ls", str(tmp_path), "--json"))
    assert [r["shared"] for r in rows] == [8 * 2**20, 8 * 2**20]
    info = run_cli("info", str(tmp_path))
    assert "8.0 MiB shared with other checkpoints" in info


def run_cli(*args):
    proc = subprocess.run(
        [sys.executable, "-m", "tfckpt.cli", *args],
        capture_output=True,
        text=True,
        env=script_env(),
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def frozen_files(record):
    """The data files of `record` that hold the two frozen 4 MiB kernels."""
    return [
        f for f, e in record.manifest["files"].items() if ".data-" in f and e["size"] == 4 * 2**20
    ]


def test_never_links_a_file_changed_damaged_or_not_ours(tmp_path):
    model = finetune_model()
    x, y = data()
    fresh = finetune_model(seed=1)
    fresh.optimizer.build(fresh.trainable_variables)
    with tfckpt.CheckpointManager(tmp_path, model, keep_last=None, monitor=None) as manager:
        model.fit(x, y, verbose=0)
        first = manager.save(epoch=1)
        model.fit(x, y, verbose=0)
        second = manager.save(epoch=2)
        a, b = frozen_files(second)
        assert files_of(second)[a].st_ino == files_of(first)[a].st_ino  # linked
        # 1. Changed in place after its commit (same size): not linked again.
        path = os.path.join(second.directory, a)
        with open(path, "r+b") as f:
            f.seek(100)
            byte = f.read(1)
            f.seek(100)
            f.write(bytes([byte[0] ^ 1]))
        model.fit(x, y, verbose=0)
        third = manager.save(epoch=3)
        assert files_of(third)[a].st_ino != files_of(second)[a].st_ino
        assert files_of(third)[b].st_ino == files_of(second)[b].st_ino
        # 2. Bit rot (the modification time put back) found by a restore of an
        # older checkpoint sharing the file: that inode is never linked again,
        # though the newest checkpoint was not checked.
        path = os.path.join(third.directory, b)
        st = os.stat(path)
        with open(path, "r+b") as f:
            f.seek(100)
            byte = f.read(1)
            f.seek(100)
            f.write(bytes([byte[0] ^ 1]))
        os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
    with tfckpt.CheckpointManager(tmp_path, fresh, keep_last=None, monitor=None) as manager:
        with pytest.raises(NoIntactCheckpointError):
            manager.restore(first.name)  # found damaged and marked
    with tfckpt.CheckpointManager(tmp_path, model, keep_last=None, monitor=None) as manager:
        model.fit(x, y, verbose=0)
        fourth = manager.save(epoch=4)
        assert files_of(fourth)[b].st_ino != files_of(third)[b].st_ino
        assert files_of(fourth)[a].st_ino == files_of(third)[a].st_ino
    assert dict(tfckpt.verify(tmp_path))[fourth.name] is None
    # 3. A symlink planted in the run directory (a copy from someone else):
    # never linked, even with the right hash; the save writes its own file.
    outside = tmp_path.parent / f"{tmp_path.name}-outside"
    outside.mkdir()
    target = os.path.join(fourth.directory, a)
    os.replace(target, outside / "kernel")
    os.symlink(outside / "kernel", target)
    with tfckpt.CheckpointManager(tmp_path, model, keep_last=None, monitor=None) as manager:
        model.fit(x, y, verbose=0)
        fifth = manager.save(epoch=5)
    # The checkpoint holding the planted link is damage, never read through:
    # the save shares with the newest intact one instead.
    assert stat.S_ISREG(os.lstat(os.path.join(fifth.directory, a)).st_mode)
    assert fifth.manifest["files"][a].get("shared") == third.name
    problems = dict(tfckpt.verify(tmp_path))
    assert "is a symbolic link" in problems[fourth.name] and problems[fifth.name] is None


def test_a_byte_that_rots_in_a_shared_file_is_never_linked_into_later_checkpoints(tmp_path):
    # A media error flips a byte on disk and leaves the modification time as it
    # was: the manifest's hash and mtime still match, the bytes do not.
    model = finetune_model()
    x, y = data()
    with tfckpt.CheckpointManager(tmp_path, model, keep_last=None, monitor=None) as manager:
        for epoch in (1, 2):
            model.fit(x, y, verbose=0)
            manager.save(epoch=epoch)
        first, second = tfckpt.open(tmp_path).checkpoints
        frozen = frozen_files(second)
        assert all(second.manifest["files"][f].get("shared") for f in frozen)
        path = os.path.join(second.directory, frozen[0])
        rot(path, os.path.getsize(path) // 3)
        for epoch in (3, 4):  # from correct weights in memory
            model.fit(x, y, verbose=0)
            manager.save(epoch=epoch)
    records = tfckpt.open(tmp_path).checkpoints
    problems = dict(tfckpt.verify(tmp_path))
    # The two that shared the file before it rotted are damaged; the ones saved
    # after are whole (a full copy of that file, then shared again).
    assert problems[first.name] and problems[second.name]
    assert [problems[r.name] for r in records[2:]] == [None, None]
    assert not records[2].manifest["files"][frozen[0]].get("shared")
    assert records[3].manifest["files"][frozen[0]].get("shared") == records[2].name
    fresh = finetune_model(seed=1)
    fresh.optimizer.build(fresh.trainable_variables)
    assert tfckpt.restore(fresh, str(tmp_path)).name == records[3].name
