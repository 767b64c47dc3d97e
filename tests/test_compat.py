"""`tfckpt.compat.CheckpointManager` against the `CheckpointManager`
scenarios of TensorFlow's own `checkpoint_management_test.py` (each test names
the one it ports; where tfckpt differs on purpose, the test says how and
docs/migrating.md says why), and tfckpt's additions: fallback past a damaged
checkpoint, adopting a directory TF's manager wrote, a Keras model resumed."""

import os
import pathlib

import numpy as np
import pytest
import tensorflow as tf
from support import rot, small_model

import tfckpt
import tfckpt.manager
from tfckpt.compat import CheckpointManager


def exists(path):
    """TF's `checkpoint_exists`: the checkpoint's index file is there."""
    return tf.io.gfile.exists(f"{path}.index")


def reopen(manager, *args, **kwargs):
    """A new manager on `manager`'s directory (TF's tests `del` the old one;
    here it is still referenced until the caller rebinds the name, as in a
    notebook cell run again: its lock goes once it is unreachable)."""
    return CheckpointManager(manager.checkpoint, manager.directory, *args, **kwargs)


@pytest.fixture
def clock(monkeypatch):
    """A fake wall clock for the times checkpoints record (TF's tests patch
    `time` the same way)."""
    now = {"t": 0.0}
    monkeypatch.setattr(tfckpt.manager, "now", lambda: now["t"])
    return now


def test_deletion(tmp_path):  # testDeletion
    manager = CheckpointManager(tf.train.Checkpoint(), tmp_path, max_to_keep=3)
    paths = [manager.save() for _ in range(4)]
    assert [exists(p) for p in paths] == [False, True, True, True]
    assert manager.checkpoints == paths[1:]


def test_keep_all_and_reopen(tmp_path):  # testKeepAll
    manager = CheckpointManager(tf.train.Checkpoint(), tmp_path, max_to_keep=None)
    first, second, third = (manager.save() for _ in range(3))
    assert all(exists(p) for p in (first, second, third))
    assert manager.latest_checkpoint == third
    assert manager.checkpoints == [first, second, third]
    manager = reopen(manager, max_to_keep=None)
    fourth = manager.save()
    assert manager.checkpoints == [first, second, third, fourth]
    manager = reopen(manager, max_to_keep=3)
    # Differs: `checkpoints` lists at most `max_to_keep` (TF lists all four
    # until the next save); nothing is deleted before a save, as with TF.
    assert manager.checkpoints == [second, third, fourth]
    assert all(exists(p) for p in (first, second, third, fourth))
    fifth = manager.save()
    assert manager.checkpoints == [third, fourth, fifth]
    assert [exists(p) for p in (first, second, third, fourth, fifth)] == [
        False,
        False,
        True,
        True,
        True,
    ]


def test_keep_every_n_hours_with_a_fake_clock(tmp_path, clock):  # testSaveRestoreState
    checkpoint = tf.train.Checkpoint()
    manager = CheckpointManager(checkpoint, tmp_path, max_to_keep=2)
    clock["t"] = 10000.0
    first = manager.save()
    clock["t"] += 3610.0
    second = manager.save()
    assert manager.checkpoints == [first, second]
    assert manager.latest_checkpoint == second
    manager = reopen(manager, max_to_keep=2, keep_checkpoint_every_n_hours=1.5)
    assert manager.checkpoints == [first, second]
    assert manager.latest_checkpoint == second
    paths = [first, second]
    for hours in (0.2, 0.5, 0.5):
        clock["t"] += 3600.0 * hours
        paths.append(manager.save())
    manager = reopen(manager, max_to_keep=2, keep_checkpoint_every_n_hours=1.5)
    assert manager.latest_checkpoint == paths[-1]
    clock["t"] += 10.0
    paths.append(manager.save())
    # Differs: tfckpt keeps the first checkpoint of every 1.5-hour window of
    # wall time, windows aligned to the Unix epoch (10000 s falls in window 1,
    # 13610-16130 s in window 2, 17930 s in window 3), so whether a checkpoint
    # is kept never depends on which others were deleted. TF keeps one when
    # 1.5 hours passed since the last one it kept (1, 4, 5, 6 here).
    assert [exists(p) for p in paths] == [True, True, False, False, True, True]
    assert manager.checkpoints == paths[-2:]


def test_a_clock_set_back_deletes_nothing_kept(tmp_path, clock):  # testClockReset
    clock["t"] = 10000.0
    manager = CheckpointManager(
        tf.train.Checkpoint(), tmp_path, max_to_keep=1, keep_checkpoint_every_n_hours=1.0
    )
    paths = []
    for _ in range(3):
        paths.append(manager.save())
        clock["t"] += 3600.0
    # One per hour-long window: all three kept, only the newest listed.
    assert all(exists(p) for p in paths) and manager.checkpoints == paths[-1:]
    clock["t"] = 5000.0
    manager = reopen(manager, max_to_keep=1)
    assert manager.latest_checkpoint == paths[-1]
    fourth = manager.save()
    assert manager.latest_checkpoint == fourth == tf.train.latest_checkpoint(str(tmp_path))
    # Differs: TF forgets the older ones (they stay on disk, unlisted); with
    # tfckpt, without keep_checkpoint_every_n_hours now, retention applies to
    # the whole run: the newest is kept, by commit order, not by the clock.
    assert exists(fourth) and manager.checkpoints == [fourth]


def test_continue_from_unmanaged(tmp_path):  # testContinueFromUnmanaged
    prefix = str(tmp_path / "unusual_prefix")
    checkpoint = tf.train.Checkpoint()
    unmanaged = [checkpoint.save(prefix), checkpoint.save(prefix)]
    checkpoint = tf.train.Checkpoint()
    manager = CheckpointManager(checkpoint, tmp_path, max_to_keep=2)
    assert manager.latest_checkpoint == unmanaged[1]
    checkpoint.restore(manager.latest_checkpoint)
    assert int(checkpoint.save_counter) == 2
    third = manager.save()
    # Differs: TF's own checkpoints found in the directory are listed (TF
    # lists only those its manager's state file names) and never deleted.
    assert manager.checkpoints == [*unmanaged, third]
    fourth, fifth = manager.save(), manager.save()
    assert manager.checkpoints == [*unmanaged, fourth, fifth]
    assert [exists(p) for p in (*unmanaged, third, fourth, fifth)] == [
        True,
        True,
        False,
        True,
        True,
    ]
    assert int(checkpoint.save_counter) == 5


def test_custom_numbering(tmp_path):  # testCustomNumbering
    step = tf.Variable(0, dtype=tf.int64)
    checkpoint = tf.train.Checkpoint(step=step)
    manager = CheckpointManager(checkpoint, tmp_path, max_to_keep=2)
    for _ in range(5):
        path = manager.save(checkpoint_number=step)
        step.assign_add(2)
    assert int(checkpoint.save_counter) == 5
    last = manager.save(checkpoint_number=32)
    assert last == manager.latest_checkpoint == tf.train.latest_checkpoint(str(tmp_path))
    assert manager.checkpoints == [path, last]
    # Differs: the number is the checkpoint's recorded step, not part of its
    # path (tfckpt names checkpoints by commit: ckpt-NNNNNN/ckpt).
    assert [r.step for r in tfckpt.open(tmp_path).checkpoints] == [8, 32]


def test_custom_checkpoint_name_is_accepted(tmp_path):  # testCustomCheckpointPrefix
    manager = CheckpointManager(
        tf.train.Checkpoint(), tmp_path, max_to_keep=2, checkpoint_name="ckpt_name"
    )
    path = manager.save(checkpoint_number=5)
    # Differs: tfckpt's names (see docs/migrating.md); the path still works.
    assert os.path.basename(os.path.dirname(path)).startswith("ckpt-")
    tf.train.Checkpoint().restore(path).assert_consumed()


def test_restore_or_initialize(tmp_path):  # testRestoreOrInitialize
    init_v = tf.Variable(2.0)
    init_path = tf.train.Checkpoint(v=init_v).save(str(tmp_path / "init"))
    v = tf.Variable(1.0)
    checkpoint = tf.train.Checkpoint(v=v)
    manager = CheckpointManager(
        checkpoint,
        tmp_path / "ckpt",
        max_to_keep=None,
        init_fn=lambda: checkpoint.restore(init_path),
    )
    assert manager.restore_or_initialize() is None
    assert float(v) == 2.0
    saved = manager.save()
    v.assign(7.0)
    assert manager.restore_or_initialize() == saved
    assert float(v) == 2.0


def test_pathlib_directory(tmp_path):
    # testCheckpointManagerFSpathDirectory, testLatestCheckpointFSpathDirectory
    directory = pathlib.Path(tmp_path)
    v = tf.Variable(0.0)
    manager = CheckpointManager(
        tf.train.Checkpoint(v=v), directory, max_to_keep=2, checkpoint_name="ckpt_name"
    )
    saved = manager.save()
    assert isinstance(saved, str) and saved.startswith(str(directory))
    assert tf.train.latest_checkpoint(directory) == saved
    assert manager.restore_or_initialize() == saved


def every_two_steps(directory, step_counter, **kwargs):
    """A manager that saves every 2 steps of `step_counter`, keeping all."""
    checkpoint = tf.train.Checkpoint(v=tf.Variable(1.0))
    return CheckpointManager(
        checkpoint,
        directory,
        max_to_keep=None,
        step_counter=step_counter,
        checkpoint_interval=2,
        **kwargs,
    )


def test_checkpoint_interval(tmp_path):  # testCheckpointInterval
    step_counter = tf.Variable(0)
    manager = every_two_steps(tmp_path, step_counter)
    assert exists(manager.save(check_interval=True))  # step 0: the first
    step_counter.assign_add(1)
    assert manager.save(check_interval=True) is None  # step 1
    step_counter.assign_add(1)
    assert exists(manager.save(check_interval=True))  # step 2
    assert manager.save(check_interval=True) is None  # step 2 again
    step_counter.assign_add(1)
    assert manager.save(check_interval=True) is None  # step 3
    assert exists(manager.save(check_interval=False))  # always
    assert [r.step for r in tfckpt.open(tmp_path).checkpoints] == [0, 2, 3]


def test_checkpoint_interval_with_last_checkpoint_step(tmp_path):
    # testCheckpointIntervalWithLastCheckpointStep
    step_counter = tf.Variable(1)
    manager = every_two_steps(tmp_path, step_counter, last_checkpoint_step=1)
    assert manager.save(check_interval=True) is None  # step 1
    step_counter.assign_add(1)
    assert manager.save(check_interval=True) is None  # step 2
    step_counter.assign_add(1)
    assert exists(manager.save(check_interval=True))  # step 3


def test_checkpoint_interval_with_restore(tmp_path):  # testCheckpointIntervalWithRestore
    step_counter = tf.Variable(0)
    checkpoint = tf.train.Checkpoint(v=tf.Variable(1.0))
    checkpoint.save(str(tmp_path / "ckpt"))
    manager = CheckpointManager(
        checkpoint,
        tmp_path,
        max_to_keep=None,
        step_counter=step_counter,
        checkpoint_interval=2,
    )
    assert manager.restore_or_initialize() is not None
    assert manager.save() is None  # restored at this step


def test_a_directory_of_tfs_manager_is_adopted(tmp_path):
    a = tf.Variable(3.0)
    tf_manager = tf.train.CheckpointManager(tf.train.Checkpoint(a=a), tmp_path, max_to_keep=3)
    old = [tf_manager.save()]
    a.assign(4.0)
    old.append(tf_manager.save())
    del tf_manager
    b = tf.Variable(0.0)
    checkpoint = tf.train.Checkpoint(a=b)
    manager = CheckpointManager(checkpoint, tmp_path, max_to_keep=1)
    assert manager.checkpoints == old and manager.latest_checkpoint == old[1]
    assert manager.restore_or_initialize() == old[1]
    assert float(b) == 4.0 and int(checkpoint.save_counter) == 2
    b.assign(5.0)
    new = [manager.save(), manager.save()]
    assert int(checkpoint.save_counter) == 4
    # New checkpoints are tfckpt's (committed, checksummed, retained); TF's
    # are listed and restorable, and never deleted.
    assert manager.checkpoints == [*old, new[1]]
    assert all(exists(p) for p in old) and not exists(new[0])
    assert tf.train.latest_checkpoint(str(tmp_path)) == new[1]
    assert all(problem is None for _, problem in tfckpt.verify(tmp_path))


def test_a_damaged_newest_checkpoint_falls_back(tmp_path):
    v = tf.Variable(0.0)
    checkpoint = tf.train.Checkpoint(v=v)
    manager = CheckpointManager(checkpoint, tmp_path, max_to_keep=3)
    v.assign(1.0)
    first = manager.save()
    v.assign(2.0)
    manager.save()
    newest = tfckpt.open(tmp_path).latest
    (data,) = pathlib.Path(newest.directory).glob("ckpt.data-*")
    rot(data, data.stat().st_size // 2)
    manager = reopen(manager, max_to_keep=3)
    v.assign(9.0)
    with pytest.warns(UserWarning, match="skipping ckpt-000002"):
        assert manager.restore_or_initialize() == first
    assert float(v) == 1.0
    # The damaged one is left on disk and no longer counts as the newest.
    assert exists(newest.path) and manager.latest_checkpoint == first


def test_a_keras_model_and_optimizer_resume_through_plain_tf_restore(tmp_path):
    model = small_model()
    x = np.ones((8, 4), np.float32)
    model.fit(x, x[:, :1], epochs=2, verbose=0)
    checkpoint = tf.train.Checkpoint(model=model, optimizer=model.optimizer)
    path = CheckpointManager(checkpoint, tmp_path, max_to_keep=2).save()
    twin = small_model(value=0.0)
    twin.optimizer.build(twin.trainable_variables)
    tf.train.Checkpoint(model=twin, optimizer=twin.optimizer).restore(path).assert_consumed()
    for a, b in zip(
        model.weights + model.optimizer.variables, twin.weights + twin.optimizer.variables
    ):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        ({"max_to_keep": 0}, ValueError, r"`max_to_keep` must be a positive integer or None"),
        ({"max_to_keep": 2, "checkpoint_interval": 2}, ValueError, r"`step_counter` should be"),
        (
            {"max_to_keep": 2, "checkpoint_interval": 0, "step_counter": "s"},
            ValueError,
            r"`checkpoint_interval` must be a positive integer or None. Received: 0",
        ),
        ({"max_to_keep": 2, "init_fn": 3}, ValueError, r"`init_fn` must be callable"),
    ],
)
def test_bad_arguments_are_named(tmp_path, kwargs, error, match):
    with pytest.raises(error, match=match):
        CheckpointManager(tf.train.Checkpoint(), tmp_path, **kwargs)


def test_not_a_checkpoint_is_named(tmp_path):
    with pytest.raises(
        TypeError, match="`checkpoint` must be a tf.train.Checkpoint. Received: dict"
    ):
        CheckpointManager({}, tmp_path, max_to_keep=2)


def test_the_core_manager_takes_a_checkpoint_or_objects_alone(tmp_path):
    step = tf.Variable(0, dtype=tf.int64)
    with tfckpt.CheckpointManager(tmp_path / "a", None, objects={"step": step}) as manager:
        step.assign(5)
        manager.save(step=5)
        step.assign(0)
        assert manager.restore().step == 5 and int(step) == 5
    with pytest.raises(ValueError, match="holds everything to save"):
        tfckpt.CheckpointManager(tmp_path / "b", tf.train.Checkpoint(), objects={"step": step})


def test_one_writer_at_a_time_and_readers_take_nothing(tmp_path):
    checkpoint = tf.train.Checkpoint(v=tf.Variable(1.0))
    writer = CheckpointManager(checkpoint, tmp_path, max_to_keep=2)
    saved = writer.save()
    # Another manager may read the directory while the writer holds it...
    reader = CheckpointManager(tf.train.Checkpoint(v=tf.Variable(0.0)), tmp_path, max_to_keep=2)
    assert reader.latest_checkpoint == saved and reader.checkpoints == [saved]
    # ...but not write into it, nor take it for a restore.
    with pytest.raises(tfckpt.DirectoryLockedError, match="open for writing in this process"):
        reader.save()
    with pytest.raises(tfckpt.DirectoryLockedError):
        reader.restore_or_initialize()
    writer.close()
    assert reader.restore_or_initialize() == saved
    assert float(reader.checkpoint.v) == 1.0


def test_a_checkpoint_root_restores_objects_created_later(tmp_path):
    with tfckpt.CheckpointManager(tmp_path, tf.train.Checkpoint(v=tf.Variable(3.0))) as manager:
        manager.save(step=1)
    later = tf.train.Checkpoint()
    with tfckpt.CheckpointManager(tmp_path, later) as manager:
        assert manager.restore().step == 1
    later.v = tf.Variable(0.0)  # created after the restore: TF's deferred restoration
    assert float(later.v) == 3.0
