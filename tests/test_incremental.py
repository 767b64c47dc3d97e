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
    assert not any(e.get("shared") for e in records[1].manifest["files"].values())
    for two_before, earlier, record in zip(records, records[1:], records[2:]):
        stats = files_of(record)
        linked = [f for f, e in record.manifest["files"].items() if e.get("shared")]
        # Both frozen kernels are one file each, the same inode as the
        # checkpoint's before the newest (never the newest's: the two newest
        # share no file); what changed was written anew.
        assert len(linked) == 2
        for f in linked:
            assert stats[f].st_ino == files_of(two_before)[f].st_ino
        assert not {s.st_ino for s in stats.values()} & {
            s.st_ino for s in files_of(earlier).values()
        }
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


@pytest.mark.parametrize("async_save", [False, True], ids=["sync", "async"])
def test_what_changes_at_every_step_is_written_into_one_data_file(tmp_path, async_save):
    # Full training: every weight and its Adam slots change at every step, so
    # no file could be shared; one file per 4 MiB tensor would only cost time.
    keras.utils.set_random_seed(0)
    model = keras.Sequential(
        [keras.Input((1024,))]
        + [keras.layers.Dense(1024) for _ in range(3)]
        + [keras.layers.Dense(1)]
    )
    model.compile(keras.optimizers.Adam(1e-3), "mse")
    x, y = data()
    cb = tfckpt.CheckpointCallback(
        tmp_path, keep_last=None, monitor=None, verbose=0, async_save=async_save
    )
    model.fit(x, y, epochs=3, batch_size=16, verbose=0, callbacks=[cb])
    records = tfckpt.open(tmp_path).checkpoints
    assert [r.epoch for r in records] == [1, 2, 3]
    for record in records:
        data_files = sorted(f for f in record.manifest["files"] if ".data-" in f)
        # Only the object graph is not optimizer state: one file, as TF's.
        assert data_files == ["ckpt.data-00000-of-00001"], data_files
        reader = tf.train.load_checkpoint(record.path)
        assert sorted(reader.get_variable_to_shape_map()) == sorted(
            tf.train.load_checkpoint(records[0].path).get_variable_to_shape_map()
        )
    restored = keras.models.clone_model(model)
    restored.compile(keras.optimizers.Adam(1e-3), "mse")
    with tfckpt.CheckpointManager(str(tmp_path), restored) as manager:
        assert manager.restore().name == records[-1].name
    for a, b in zip(weights_of(restored), weights_of(model)):
        np.testing.assert_array_equal(a, b)


def test_deleting_any_checkpoint_never_breaks_another(tmp_path):
    model = finetune_model()
    x, y = data()
    cb = tfckpt.CheckpointCallback(tmp_path, keep_last=2, monitor=None, verbose=0)
    model.fit(x, y, epochs=4, batch_size=16, verbose=0, callbacks=[cb])
    run = tfckpt.open(tmp_path)
    # Retention deleted ckpt 1 and 2: the first holders of the files 3 and 4 share.
    assert [r.epoch for r in run.checkpoints] == [3, 4]
    assert [r.manifest["files"][f].get("shared") for r in run.checkpoints for f in
            frozen_files(r)] == ["ckpt-000001"] * 2 + ["ckpt-000002"] * 2  # fmt: skip
    assert all(problem is None for _, problem in tfckpt.verify(tmp_path))
    # A prune of the older of the two: the newest stays intact and readable.
    report = run.prune(keep_last=1, dry_run=False)
    assert [r.epoch for r in report.deleted] == [3]
    assert report.bytes_freed == report.deleted[0].size  # all its own by now
    assert [problem for _, problem in tfckpt.verify(tmp_path)] == [None]
    newest = run.latest
    fresh_read(finetune_model, newest.path)
    # Only links remain: the shared files are this checkpoint's own now.
    assert run.shared_bytes(newest) == 0
    # Training on (a completed fit trains on) links to what is left: epoch 5
    # writes its own copy (never one file for the two newest), 6 links 4's.
    cb = tfckpt.CheckpointCallback(tmp_path, keep_last=None, monitor=None, verbose=0)
    model.fit(x, y, epochs=2, batch_size=16, verbose=0, callbacks=[cb])
    records = run.checkpoints
    assert [r.epoch for r in records] == [4, 5, 6]
    assert not any(e.get("shared") for e in records[1].manifest["files"].values())
    assert [records[2].manifest["files"][f].get("shared") for f in frozen_files(records[2])] == [
        newest.name
    ] * 2
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
    assert shared and records[-1].manifest["files"][shared[0]]["shared"] == records[1].name
    # Flip a byte in the middle of a shared file, through the newest checkpoint.
    path = os.path.join(records[-1].directory, shared[0])
    with open(path, "r+b") as f:
        f.seek(os.path.getsize(path) // 2)
        byte = f.read(1)
        f.seek(-1, os.SEEK_CUR)
        f.write(bytes([byte[0] ^ 0xFF]))
    problems = dict(tfckpt.verify(tmp_path))
    # Epoch 1 has the old backbone's files, epoch 3 a copy of its own (the two
    # newest never share a file); epochs 2 and 4 share the flipped one.
    assert problems[records[0].name] is None and problems[records[2].name] is None
    for record in (records[1], records[3]):
        assert "does not match" in problems[record.name]
        assert shared[0] in problems[record.name]
        assert "shared (hard-linked) with" in problems[record.name]
    # The fallback skips every checkpoint that shares the damaged file.
    fresh = finetune_model(seed=1)
    fresh.optimizer.build(fresh.trainable_variables)
    with tfckpt.CheckpointManager(tmp_path, fresh, monitor=None, keep_last=None) as manager:
        with pytest.warns(UserWarning, match="damaged"):
            restored = manager.restore()
    assert restored.name == records[2].name
    # With no intact checkpoint left, restoring raises; nothing is deleted.
    for record in (records[0], records[2]):
        with open(os.path.join(record.directory, "ckpt.index"), "r+b") as f:
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
    model.fit(x, y, epochs=3, batch_size=16, verbose=0, callbacks=[cb])
    rows = json.loads(run_cli("ls", str(tmp_path), "--json"))
    assert [r["shared"] for r in rows] == [8 * 2**20, 0, 8 * 2**20]
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


def flip(path, keep_mtime=False):
    """A flipped bit at byte 100: bit rot (`keep_mtime`), or a write the OS saw."""
    rot(path, 100)
    if not keep_mtime:
        os.utime(path)


def test_never_links_a_file_changed_damaged_or_not_ours(tmp_path):
    model = finetune_model()
    x, y = data()
    fresh = finetune_model(seed=1)
    fresh.optimizer.build(fresh.trainable_variables)

    def save(manager, epoch):
        model.fit(x, y, verbose=0)
        return manager.save(epoch=epoch)

    with tfckpt.CheckpointManager(tmp_path, model, keep_last=None, monitor=None) as manager:
        first, second, third = (save(manager, epoch) for epoch in (1, 2, 3))
        a, b = frozen_files(third)
        assert files_of(third)[a].st_ino == files_of(first)[a].st_ino  # linked
        assert files_of(second)[a].st_ino != files_of(first)[a].st_ino  # its own
        # 1. Changed in place after its commit (same size): not linked again.
        flip(os.path.join(second.directory, a))
        fourth = save(manager, 4)  # links the files of `second`
        assert files_of(fourth)[a].st_ino != files_of(second)[a].st_ino
        assert files_of(fourth)[b].st_ino == files_of(second)[b].st_ino
        # 2. Bit rot (the modification time put back) found by a restore of an
        # older checkpoint sharing the file: its files are never linked again,
        # though the checkpoint they would be linked from was not checked.
        flip(os.path.join(third.directory, b), keep_mtime=True)
    with tfckpt.CheckpointManager(tmp_path, fresh, keep_last=None, monitor=None) as manager:
        with pytest.raises(NoIntactCheckpointError):
            manager.restore(first.name)  # found damaged and marked
    with tfckpt.CheckpointManager(tmp_path, model, keep_last=None, monitor=None) as manager:
        fifth = save(manager, 5)  # would link the files of `third`
        # No file of a checkpoint found damaged is linked again: `first`'s two
        # kernels are `third`'s.
        assert files_of(fifth)[b].st_ino != files_of(third)[b].st_ino
        assert files_of(fifth)[a].st_ino != files_of(third)[a].st_ino
    assert dict(tfckpt.verify(tmp_path))[fifth.name] is None
    # 3. A symlink planted in the run directory (a copy from someone else):
    # never linked, even with the right hash; the save writes its own file.
    outside = tmp_path.parent / f"{tmp_path.name}-outside"
    outside.mkdir()
    for record in (fourth, fifth):
        target = os.path.join(record.directory, a)
        os.replace(target, outside / record.name)
        os.symlink(outside / record.name, target)
    with tfckpt.CheckpointManager(tmp_path, model, keep_last=None, monitor=None) as manager:
        sixth = save(manager, 6)
    # The checkpoints holding the planted links are damage, never read through.
    assert stat.S_ISREG(os.lstat(os.path.join(sixth.directory, a)).st_mode)
    assert sixth.manifest["files"][a].get("shared") not in (fourth.name, fifth.name)
    problems = dict(tfckpt.verify(tmp_path))
    assert "is a symbolic link" in problems[fourth.name] and problems[sixth.name] is None


def test_a_byte_that_rots_in_a_shared_file_is_never_linked_into_later_checkpoints(tmp_path):
    # A media error flips a byte on disk and leaves the modification time as it
    # was: the manifest's hash and mtime still match, the bytes do not.
    model = finetune_model()
    x, y = data()
    with tfckpt.CheckpointManager(tmp_path, model, keep_last=None, monitor=None) as manager:
        for epoch in (1, 2, 3):
            model.fit(x, y, verbose=0)
            manager.save(epoch=epoch)
        first, second, third = tfckpt.open(tmp_path).checkpoints
        frozen = frozen_files(third)
        assert all(third.manifest["files"][f].get("shared") == first.name for f in frozen)
        path = os.path.join(third.directory, frozen[0])
        rot(path, os.path.getsize(path) // 3)
        for epoch in (4, 5, 6):  # from correct weights in memory
            model.fit(x, y, verbose=0)
            manager.save(epoch=epoch)
    records = tfckpt.open(tmp_path).checkpoints
    problems = dict(tfckpt.verify(tmp_path))
    # The two that shared the file when it rotted are damaged, and only them:
    # the checkpoints between them had their own copy, and the 5th, which
    # would have linked it, has a full copy of that file.
    assert [r.name for r in records if problems[r.name]] == [first.name, third.name]
    assert records[4].manifest["files"][frozen[0]].get("shared") is None
    assert records[4].manifest["files"][frozen[1]].get("shared") == third.name
    fresh = finetune_model(seed=1)
    fresh.optimizer.build(fresh.trainable_variables)
    assert tfckpt.restore(fresh, str(tmp_path)).name == records[5].name
    # The whole run is never one file: the two newest share none.
    assert not {s.st_ino for s in files_of(records[4]).values()} & {
        s.st_ino for s in files_of(records[5]).values()
    }
