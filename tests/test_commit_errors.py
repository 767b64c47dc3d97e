"""Errors on the commit side of a save: never a torn checkpoint, never a raw
OS error, and a committed checkpoint always counts."""

import json
import re
import shutil
import subprocess
import sys
import uuid

import numpy as np
import pytest
import tensorflow as tf
from support import Recorder, make_model, run_script, script_env, small_model

import tfckpt
from tfckpt.store.checkpoint_store import CheckpointStore

METADATA = {"step": 1, "epoch": 1, "batch": 0, "metrics": {}, "time": 0.0}


def write_then(damage):
    """A real TF write into the checkpoint's temporary directory, then `damage`
    to its files (what an interrupted or failed TF save leaves)."""
    model = small_model()

    def write(prefix):
        tf.train.Checkpoint(model=model).write(prefix)
        damage(prefix)

    return write


def drop_data_shard(prefix):
    tf.io.gfile.remove(prefix + ".data-00000-of-00001")


def only_tf_temp_parts(prefix):
    # A failed sharded save: its parts stay in `<prefix>_temp/`, no index, no shards.
    tf.io.gfile.makedirs(prefix + "_temp")
    for name in tf.io.gfile.glob(prefix + ".*"):
        tf.io.gfile.rename(name, prefix + "_temp/part-00000-of-00001" + name[len(prefix) :])


@pytest.mark.parametrize("damage", [drop_data_shard, only_tf_temp_parts])
def test_incomplete_tf_files_are_never_committed(tmp_path, damage):
    store = CheckpointStore(str(tmp_path))
    with pytest.raises(tfckpt.CheckpointWriteError, match="checkpoint files are incomplete"):
        store.commit(write_then(damage), METADATA)
    assert store.scan() == ([], [])
    assert store.leftovers() == []
    record = store.commit(write_then(lambda prefix: None), METADATA)  # intact: committed
    assert sorted(record.manifest["files"]) == ["ckpt.data-00000-of-00001", "ckpt.index"]


def blocked_state_file(directory):
    """TF's `checkpoint` state file cannot be replaced: a directory holds its name."""
    (directory / "checkpoint").mkdir(parents=True)
    (directory / "checkpoint" / "keep").write_text("x")


def test_state_file_error_is_a_write_error_and_the_checkpoint_counts(tmp_path):
    blocked_state_file(tmp_path)
    recorder = Recorder()
    manager = tfckpt.CheckpointManager(
        str(tmp_path), small_model(), monitor="loss", keep_last=1, keep_best=0, observers=[recorder]
    )
    for step, loss in [(1, 0.5), (2, 0.4)]:
        with pytest.raises(tfckpt.CheckpointWriteError, match="checkpoint state file") as info:
            manager.save(step, epoch=step, metrics={"loss": loss})
        assert "Is a directory" in str(info.value)  # the OS error, named
        assert manager.best_value == {"value": loss, "step": step, "epoch": step}
    # Both committed (and told), and retention deleted the first all the same.
    assert recorder.events == [
        ("commit", "ckpt-000001"),
        ("commit", "ckpt-000002"),
        ("delete", "ckpt-000001"),
    ]
    assert [r.name for r in manager.checkpoints] == ["ckpt-000002"]
    manager.close()
    shutil.rmtree(tmp_path / "checkpoint")
    # The next writer repairs TF's pointer from the manifests.
    tfckpt.CheckpointManager(str(tmp_path), small_model()).close()
    assert tf.train.latest_checkpoint(str(tmp_path)) == str(tmp_path / "ckpt-000002" / "ckpt")


def test_on_save_error_warn_catches_state_file_errors(tmp_path, data):
    blocked_state_file(tmp_path)
    model = make_model()
    cb = tfckpt.CheckpointCallback(
        str(tmp_path), monitor=None, keep_last=1, verbose=0, on_save_error="warn"
    )
    with pytest.warns(UserWarning, match="checkpoint state file"):
        history = model.fit(*data, epochs=3, verbose=0, callbacks=[cb])
    assert history.epoch == [0, 1, 2]
    assert [r.epoch for r in tfckpt.open(str(tmp_path)).checkpoints] == [3]


def run_commit_errors(tmp_path, scenario):
    proc = run_script("commit_errors.py", tmp_path / "run", scenario, check=True)
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_run_directory_fsync_error_after_the_commit_point(tmp_path):
    result = run_commit_errors(tmp_path, "fsync")
    assert result["is_write_error"], result
    assert "ckpt-000003 is committed" in result["error"]
    assert "Too many open files" in result["error"]
    # It counts: best value, observers, retention.
    assert result["best"] == {"value": 0.3, "step": 3, "epoch": 3}
    assert result["events"] == [
        ["commit", "ckpt-000003"],
        ["delete", "ckpt-000001"],
        ["delete", "ckpt-000002"],
    ]
    assert result["checkpoints"] == ["ckpt-000003"]
    d = str(tmp_path / "run")
    assert tf.train.latest_checkpoint(d) == str(tmp_path / "run" / "ckpt-000003" / "ckpt")


def test_failed_deletes_warn_and_retention_goes_on(tmp_path):
    result = run_commit_errors(tmp_path, "delete")
    assert "error" not in result, result
    assert result["returned"] == "ckpt-000003"
    assert len(result["warnings"]) == 2, result["warnings"]
    for name, warning in zip(["ckpt-000001", "ckpt-000002"], result["warnings"]):
        assert f"checkpoint {name}" in warning and "Too many open files" in warning
    assert result["events"] == [
        ["commit", "ckpt-000003"],
        ["delete", "ckpt-000001"],
        ["delete", "ckpt-000002"],
    ]
    assert result["checkpoints"] == ["ckpt-000003"]
    d = str(tmp_path / "run")
    tfckpt.CheckpointManager(d, small_model()).close()  # the next writer cleans up
    assert CheckpointStore(d).leftovers() == []


def test_state_file_is_what_tensorflow_writes(tmp_path):
    d = tmp_path / "run"
    with tfckpt.CheckpointManager(str(d), small_model(), keep_last=2) as manager:
        for step in (1, 2, 3):
            manager.save(step, epoch=step)
        records = manager.checkpoints
    ours = (d / "checkpoint").read_bytes()
    tf.__internal__.train.update_checkpoint_state(
        save_dir=str(d),
        model_checkpoint_path=records[-1].path,
        all_model_checkpoint_paths=[r.path for r in records],
        all_model_checkpoint_timestamps=[r.time for r in records],
        save_relative_paths=True,
    )
    assert ours == (d / "checkpoint").read_bytes()
    state = tf.train.get_checkpoint_state(str(d))
    assert list(state.all_model_checkpoint_paths) == [r.path for r in records]
    assert tf.train.latest_checkpoint(str(d)) == records[-1].path
    assert b"ckpt-000003/ckpt" in ours and str(tmp_path).encode() not in ours  # relative


def test_state_file_leftovers_are_removed(tmp_path):
    with tfckpt.CheckpointManager(str(tmp_path), small_model()) as manager:
        manager.save(1, epoch=1)
    # What a crash inside TF's (or tfckpt's) atomic write of the state file leaves.
    leftover = tmp_path / f"checkpoint.tmp{uuid.uuid4().hex}"
    leftover.write_text('model_checkpoint_path: "ckpt-000001/ckpt"\n')
    other = tmp_path / "checkpoint.tmp-notes.txt"  # not TF's temporary name: kept
    other.write_text("mine")
    assert CheckpointStore(str(tmp_path)).leftovers() == [leftover.name]
    tfckpt.CheckpointManager(str(tmp_path), small_model()).close()
    assert not leftover.exists() and other.exists()


SYNC_SCRIPT = """
import sys, keras, tfckpt
model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(1)])
with tfckpt.CheckpointManager(sys.argv[1], model) as manager:
    manager.save(1)
"""


@pytest.mark.skipif(shutil.which("strace") is None, reason="needs strace")
def test_state_file_and_new_run_directory_are_synced(tmp_path):
    run_dir = tmp_path / "new" / "run"
    log = tmp_path / "strace.log"
    subprocess.run(
        [
            "strace",
            "-f",
            "-qq",
            "-y",
            "-o",
            str(log),
            "-e",
            "trace=fsync,fdatasync,rename,renameat,renameat2",
            sys.executable,
            "-c",
            SYNC_SCRIPT,
            str(run_dir),
        ],
        env=script_env(),
        check=True,
        capture_output=True,
        timeout=300,
    )
    calls = [
        line.split(None, 1)[1]
        for line in log.read_text().splitlines()
        if re.search(r"\b(fsync|fdatasync|rename\w*)\(", line)
    ]

    def index(pattern):
        found = [i for i, call in enumerate(calls) if re.search(pattern, call)]
        assert found, f"no {pattern!r} among:\n" + "\n".join(calls)
        return found[0]

    # The new directories' names are durable: their parents are synced.
    index(rf"fsync\(\d+<{re.escape(str(tmp_path / 'new'))}>\)")
    index(rf"fsync\(\d+<{re.escape(str(tmp_path))}>\)")
    # TF's state file: its temporary file is synced before it takes the name.
    synced = index(r"fsync\(\d+<[^>]*/run/checkpoint\.tmp[0-9a-f]{32}>\)")
    renamed = index(r"rename\w*\(.*checkpoint\.tmp[0-9a-f]{32}\".*run/checkpoint\"")
    assert synced < renamed
    state = tf.train.get_checkpoint_state(str(run_dir))
    assert state.model_checkpoint_path == str(run_dir / "ckpt-000001" / "ckpt")
    assert np.isfinite(state.all_model_checkpoint_timestamps[0])
