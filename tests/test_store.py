"""The commit protocol under real crashes, and the store on TF's ram:// filesystem."""

import os
import signal

import keras
import numpy as np
import pytest
import tensorflow as tf
from support import (
    cache,
    cached_bytes,
    make_model,
    page_cache_droppable,
    small_model,
    start_script,
)

import tfckpt
from tfckpt.store.checkpoint_store import CheckpointStore

# Every step of a save, in order; the script crashes right after the named one.
STEPS = [
    "write",
    "link",
    "fsync_files",
    "manifest",
    "fsync_tmpdir",
    "rename",
    "fsync_dir",
    "state_file",
    "delete",
]
COMMITTED_FROM = STEPS.index("rename")


def test_crash_at_every_commit_step_leaves_old_or_new_never_a_mix(tmp_path):
    procs = {step: start_script("crash_commit.py", tmp_path / step, step) for step in STEPS}
    for step, proc in procs.items():
        out, err = proc.communicate(timeout=300)
        assert proc.returncode == -signal.SIGKILL, f"{step}: {out}{err}"

    for i, step in enumerate(STEPS):
        d = str(tmp_path / step)
        expected = 2.0 if i >= COMMITTED_FROM else 1.0
        model = small_model(build=False)
        manager = tfckpt.CheckpointManager(d, model, keep_last=1)  # the restart
        record = manager.restore()
        values = np.concatenate([v.numpy().ravel() for v in model.weights])
        assert np.all(values == expected), f"crash after {step}: restored a mix {values}"
        assert record.epoch == (2 if expected == 2.0 else 1)
        # The restart cleaned the leftovers, repaired TF's pointer, and all is intact.
        assert CheckpointStore(d).leftovers() == []
        assert tf.train.latest_checkpoint(d) == manager.latest.path
        assert all(problem is None for _, problem in tfckpt.verify(d)), tfckpt.verify(d)
        # And the next save works and retention applies.
        manager.save(epoch=3)
        assert [r.epoch for r in manager.checkpoints] == [3]
        manager.close()


def test_ram_filesystem(data):
    d = "ram://tfckpt-tests/run"
    model = make_model()
    cb = tfckpt.CheckpointCallback(d, verbose=0, keep_last=2)
    model.fit(*data, validation_split=0.25, epochs=3, verbose=0, callbacks=[cb])
    run = tfckpt.open(d)
    assert [r.epoch for r in run.checkpoints] == [2, 3]
    assert tf.train.latest_checkpoint(d) == run.latest.path
    other = make_model(seed=4)
    tfckpt.restore(other, d)
    for a, b in zip(model.weights, other.weights):
        np.testing.assert_array_equal(a.numpy(), b.numpy())
    assert all(problem is None for _, problem in tfckpt.verify(d))


@pytest.mark.parametrize("damage", ["delete", "garble"])
def test_damaged_tf_pointer_costs_nothing(tmp_path, data, damage):
    model = make_model()
    cb = tfckpt.CheckpointCallback(str(tmp_path), verbose=0)
    model.fit(*data, validation_split=0.25, epochs=2, verbose=0, callbacks=[cb])
    pointer = tmp_path / "checkpoint"
    if damage == "delete":
        pointer.unlink()
    else:
        pointer.write_bytes(b"\x00garbage{{{")
    model2 = make_model(seed=3)
    cb2 = tfckpt.CheckpointCallback(str(tmp_path), verbose=0)
    history = model2.fit(*data, validation_split=0.25, epochs=3, verbose=0, callbacks=[cb2])
    assert cb2.restored.epoch == 2 and history.epoch == [2]
    assert tf.train.latest_checkpoint(str(tmp_path)) == tfckpt.open(str(tmp_path)).latest.path


def test_leftover_temporaries_are_ignored_then_cleaned(tmp_path, data):
    model = make_model()
    manager = tfckpt.CheckpointManager(str(tmp_path), model)
    manager.save(epoch=1)
    manager.close()
    # What a crash mid-save leaves: a temp dir with partial files, not committed.
    tmp = tmp_path / ".tmp-ckpt-000002-deadbeef"
    tmp.mkdir()
    (tmp / "ckpt.data-00000-of-00001").write_bytes(b"partial")
    assert [r.name for r in tfckpt.open(str(tmp_path)).checkpoints] == ["ckpt-000001"]
    manager = tfckpt.CheckpointManager(str(tmp_path), model)
    assert not tmp.exists()
    assert manager.save(epoch=2).name == "ckpt-000002"
    manager.close()


def test_checkpoint_is_plain_tensorflow(tmp_path, data):
    model = make_model()
    model.fit(*data, epochs=1, verbose=0)
    with tfckpt.CheckpointManager(str(tmp_path), model) as manager:
        record = manager.save(epoch=1, metrics={"loss": 0.5})
    assert record.path == tf.train.latest_checkpoint(str(tmp_path))
    fresh = make_model(seed=2)
    fresh.optimizer.build(fresh.trainable_variables)
    status = tf.train.Checkpoint(model=fresh, optimizer=fresh.optimizer).restore(record.path)
    status.assert_consumed()
    for a, b in zip(
        model.weights + model.optimizer.variables, fresh.weights + fresh.optimizer.variables
    ):
        np.testing.assert_array_equal(a.numpy(), b.numpy())


def test_one_writer_per_directory_and_a_killed_holder_does_not_block(tmp_path):
    holder = start_script("hold_lock.py", tmp_path)
    try:
        line = holder.stdout.readline()
        assert line.startswith("locked"), line
        model = small_model(build=False)
        with pytest.raises(tfckpt.DirectoryLockedError, match=rf"pid {holder.pid} on host"):
            tfckpt.CheckpointManager(str(tmp_path), model)
        assert tfckpt.open(str(tmp_path)).checkpoints == []  # readers are never blocked
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    manager = tfckpt.CheckpointManager(str(tmp_path), small_model(build=False))  # the restart
    manager.save(epoch=1)
    manager.close()


def test_custom_retention_policy_is_applied_and_listed(tmp_path):
    import dataclasses

    @dataclasses.dataclass(frozen=True)
    class KeepEvenSteps:
        def keep(self, checkpoints):
            return ["even step" if c.step % 2 == 0 else None for c in checkpoints]

    with tfckpt.CheckpointManager(
        str(tmp_path), small_model(build=False), keep_last=1, retention=KeepEvenSteps()
    ) as manager:
        for step in range(1, 6):
            manager.save(step, epoch=step)
        assert [(r.step, r.kept) for r in manager.checkpoints] == [
            (2, "even step"),
            (4, "even step"),
            (5, "latest, last 1"),
        ]
    listed = tfckpt.open(str(tmp_path)).checkpoints
    assert [r.step for r in listed] == [2, 4, 5] and all(r.kept for r in listed)


def data_files(directory, record):
    return sorted(p for p in (directory / record.name).iterdir() if ".data-" in p.name)


def test_a_save_drops_the_cache_of_the_third_newest_checkpoint_only(tmp_path):
    """Before a save writes, the third-newest checkpoint's data files leave the
    page cache (their memory is what the save's own pages reuse); the newest
    (what a restore reads) and the one before it (what sharing reads back)
    stay cached, and nothing on disk changes."""
    if not page_cache_droppable(tmp_path):
        pytest.skip("this filesystem keeps its pages cached (tmpfs) or fincore is missing")
    model = make_model(units=512)
    rng = np.random.default_rng(0)

    def save(manager, epoch):  # as after an epoch of training: no file shared
        for v in model.weights:
            v.assign(rng.standard_normal(v.shape).astype("float32"))
        return manager.save(epoch=epoch)

    with tfckpt.CheckpointManager(str(tmp_path), model, keep_last=None) as manager:
        records = [save(manager, e) for e in (1, 2, 3)]
        before = {r.name: [(p, p.read_bytes()) for p in data_files(tmp_path, r)] for r in records}
        for record in records:
            assert all(cache(p) > 0 for p in data_files(tmp_path, record))
        save(manager, 4)
    assert all(cached_bytes(p) == 0 for p in data_files(tmp_path, records[0]))
    assert all(cached_bytes(p) > 0 for r in records[1:] for p in data_files(tmp_path, r))
    for name, files in before.items():
        assert all(p.read_bytes() == data for p, data in files), name
    assert [r.name for r in tfckpt.open(tmp_path).checkpoints][:3] == [r.name for r in records]


def test_a_file_the_newest_checkpoint_shares_stays_cached(tmp_path):
    """Incremental saves alternate two copies of an unchanged file, so the
    third-newest checkpoint shares one with the newest: that file keeps its
    pages (a restore reads it), the files only the third-newest has do not."""
    if not page_cache_droppable(tmp_path):
        pytest.skip("this filesystem keeps its pages cached (tmpfs) or fincore is missing")
    frozen = keras.layers.Dense(1024, trainable=False)  # a 4 MiB kernel: a file of its own
    model = keras.Sequential([keras.Input((1024,)), frozen, keras.layers.Dense(1)])
    model.compile(keras.optimizers.Adam(), "mse")
    model.optimizer.build(model.trainable_variables)
    rng = np.random.default_rng(0)
    with tfckpt.CheckpointManager(str(tmp_path), model, keep_last=None) as manager:
        records = []
        for epoch in (1, 2, 3):
            for v in model.trainable_variables:
                v.assign(rng.standard_normal(v.shape).astype("float32"))
            records.append(manager.save(epoch=epoch))
        third, newest = (data_files(tmp_path, r) for r in (records[0], records[2]))
        shared = [p for p in newest if p.stat().st_nlink > 1]
        own = [p for p in third if p.stat().st_nlink == 1]
        assert shared and own
        assert all(os.path.samefile(p, tmp_path / records[0].name / p.name) for p in shared)
        for p in third + newest:
            cache(p)
        manager.save(epoch=4)
    assert all(cached_bytes(p) > 0 for p in shared)
    assert all(cached_bytes(p) == 0 for p in own)
