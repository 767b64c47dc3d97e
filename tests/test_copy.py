"""tfckpt.copy and `tfckpt cp`: real runs, real copies, a copy killed by SIGKILL."""

import hashlib
import os
import shutil
import signal
import subprocess
import sys
import uuid

import keras
import numpy as np
import pytest
import tensorflow as tf
from support import draw_data, make_model, rot, run_script, script_env, start_script

import tfckpt
from tfckpt.store.finished import is_finished

FIELDS = ("name", "step", "epoch", "batch", "metrics", "size", "time", "kept", "best")


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    """A run of 5 epoch-end checkpoints (all kept), written by a real training process."""
    directory = tmp_path_factory.mktemp("copy") / "src"
    run_script("train.py", directory, "--epochs", 5, "--keep-last", 10, check=True)
    assert len(tfckpt.open(str(directory)).checkpoints) == 5
    return str(directory)


def cli(*args):
    return subprocess.run(
        [sys.executable, "-m", "tfckpt.cli", *map(str, args)],
        capture_output=True,
        text=True,
        env=script_env(),
        timeout=300,
    )


def listing(directory):
    """What `tfckpt ls --json` lists, the path aside."""
    run = tfckpt.open(directory)
    best = run.best
    rows = [
        {
            **{k: getattr(r, k) for k in FIELDS if k != "best"},
            "metrics": dict(r.metrics),
            "best": r.name == best.name,
        }
        for r in run.checkpoints
    ]
    return rows + [{"name": p.name, "problem": p.reason} for p in run.problems]


def intact(directory):
    return all(problem is None for _, problem in tfckpt.verify(directory))


def snapshot(directory):
    """Every file and directory under `directory`: bytes (hash), size, mtime."""
    out = {}
    for root, dirs, files in os.walk(directory):
        for name in dirs + files:
            path = os.path.join(root, name)
            st = os.lstat(path)
            digest = None
            if name in files:
                with open(path, "rb") as f:
                    digest = hashlib.sha256(f.read()).hexdigest()
            out[os.path.relpath(path, directory)] = (st.st_size, st.st_mtime_ns, digest)
    out["."] = os.stat(directory).st_mtime_ns
    return out


def same_files(a, b, name):
    """The checkpoint `name` holds the same bytes in run directories a and b
    (the manifest aside: it records the copy's origin)."""
    files = sorted(os.listdir(os.path.join(a, name)))
    assert files == sorted(os.listdir(os.path.join(b, name)))
    for fname in files:
        if fname == "manifest.json":
            continue
        with (
            open(os.path.join(a, name, fname), "rb") as fa,
            open(os.path.join(b, name, fname), "rb") as fb,
        ):
            assert fa.read() == fb.read(), (name, fname)


def model_like_train_script(seed=0):
    """The model of tests/scripts/train.py (its default --units)."""
    return make_model(features=16, units=32, seed=seed)


def test_copy_best_with_the_cli_then_fork_from_the_copy(source, tmp_path):
    before = snapshot(source)
    dst = tmp_path / "shared-best"
    proc = cli("cp", f"{source}@best", dst)
    assert proc.returncode == 0, proc.stderr
    best = tfckpt.open(source).best
    assert f"{best.name} (step {best.step}, epoch {best.epoch}" in proc.stderr  # progress
    assert "1 copied, 0 already there" in proc.stdout

    copied = tfckpt.open(str(dst))
    assert [r.name for r in copied.checkpoints] == [best.name]
    assert copied.best.name == best.name
    assert (copied.best.step, copied.best.epoch, dict(copied.best.metrics)) == (
        best.step,
        best.epoch,
        dict(best.metrics),
    )
    assert copied.monitor == ("val_loss", "min")
    assert copied.history == tfckpt.open(source).history
    assert copied.best.manifest["copied_from"] == {"directory": source, "name": best.name}
    assert tf.train.latest_checkpoint(str(dst)) == copied.best.path
    same_files(source, str(dst), best.name)
    assert intact(str(dst))

    a, b = model_like_train_script(), model_like_train_script()
    tfckpt.restore(a, source, "best")
    tfckpt.restore(b, str(dst), "best")
    for x, y in zip(a.get_weights(), b.get_weights()):
        np.testing.assert_array_equal(x, y)

    # A colleague forks from the shared copy.
    fork = tmp_path / "fork"
    model = model_like_train_script(seed=1)
    x, y = draw_data(np.random.default_rng(1), 64, 16, informative=4)
    cb = tfckpt.CheckpointCallback(str(fork), init_from=f"{dst}@best", monitor="loss")
    model.fit(x, y, epochs=best.epoch + 1, batch_size=32, verbose=0, callbacks=[cb])
    parent = tfckpt.open(str(fork)).parent
    assert (parent["directory"], parent["name"], parent["step"]) == (
        str(dst),
        best.name,
        best.step,
    )
    assert snapshot(source) == before  # the source was only read


def test_a_copy_killed_midway_leaves_complete_checkpoints_and_a_rerun_completes_it(
    source, tmp_path
):
    before = snapshot(source)
    dst = str(tmp_path / "dst")
    proc = run_script("copy_run.py", source, dst, 3)
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    assert any(e.startswith(".tmp-ckpt-000003") for e in os.listdir(dst))  # the killed one
    check = cli("verify", dst)
    assert check.returncode == 0, check.stdout + check.stderr
    assert "2 intact, 0 damaged" in check.stdout
    assert [r.name for r in tfckpt.open(dst).checkpoints] == ["ckpt-000001", "ckpt-000002"]

    proc = run_script("copy_run.py", source, dst, check=True)
    assert "copied 3 skipped 2" in proc.stdout
    assert "ckpt-000001 (step" in proc.stderr and "already there, skipped" in proc.stderr
    assert not [e for e in os.listdir(dst) if e.startswith(".tmp-")]
    assert listing(dst) == listing(source)
    assert intact(dst)
    for record in tfckpt.open(source).checkpoints:
        same_files(source, dst, record.name)
    assert tf.train.latest_checkpoint(dst) == os.path.join(dst, "ckpt-000005", "ckpt")

    again = snapshot(dst)
    report = tfckpt.copy(source, dst, quiet=True)  # complete: nothing to do
    assert (len(report.copied), len(report.skipped)) == (0, 5)
    unlocked = lambda snap: {k: v for k, v in snap.items() if k != ".lock"}  # noqa: E731
    assert unlocked(snapshot(dst)) == unlocked(again)  # nothing rewritten
    assert snapshot(source) == before


def test_copy_to_and_from_ram(source, tmp_path):
    base = f"ram://copy-{uuid.uuid4().hex}"
    ram = f"{base}/run"
    report = tfckpt.copy(source, ram, quiet=True)
    assert [r.name for r in report.copied] == [f"ckpt-00000{i}" for i in range(1, 6)]
    assert intact(ram)
    assert tfckpt.open(ram).best.name == tfckpt.open(source).best.name

    back = str(tmp_path / "back")
    tfckpt.copy(ram, back, quiet=True)
    assert listing(back) == listing(source)
    for record in tfckpt.open(source).checkpoints:
        same_files(source, back, record.name)

    one = tfckpt.copy(source, f"{base}/one", epoch=2, quiet=True)
    assert [(r.name, r.epoch) for r in one.copied] == [("ckpt-000002", 2)]
    report = tfckpt.copy(source, ram, quiet=True)  # rerun: all there already
    assert (len(report.copied), len(report.skipped)) == (0, 5)


def test_refuses_a_locked_destination_and_never_overwrites(source, tmp_path):
    dst = tmp_path / "held"
    holder = start_script("hold_lock.py", dst)
    try:
        assert holder.stdout.readline().startswith("locked")
        with pytest.raises(tfckpt.DirectoryLockedError, match=rf"pid {holder.pid}"):
            tfckpt.copy(source, str(dst), quiet=True)
        proc = cli("cp", source, dst)
        assert proc.returncode == 1 and "while a writer is active" in proc.stderr
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    assert tfckpt.open(str(dst)).checkpoints == []

    # Another run's ckpt-000001 (other content) is never overwritten.
    other = tmp_path / "other"
    model = model_like_train_script()
    model.optimizer.build(model.trainable_variables)
    with tfckpt.CheckpointManager(str(other), model) as manager:
        manager.save(epoch=1)
    before = snapshot(str(other))
    with pytest.raises(tfckpt.CheckpointError, match="ckpt-000001.*other content"):
        tfckpt.copy(source, str(other), quiet=True)
    after = snapshot(str(other))
    assert {k: v for k, v in after.items() if k != ".lock" and k != "."} == {
        k: v for k, v in before.items() if k != ".lock" and k != "."
    }

    with pytest.raises(ValueError, match="`dst` must not be the source"):
        tfckpt.copy(source, os.path.join(source, "inside"))
    with pytest.raises(ValueError, match="`src`: cannot read the selection 'bogus'"):
        tfckpt.copy(f"{source}@bogus", str(tmp_path / "x"))
    with pytest.raises(tfckpt.CheckpointNotFoundError, match="step=999|which=999"):
        tfckpt.copy(source, str(tmp_path / "x"), which=999)
    with pytest.raises(TypeError, match="`quiet` must be True or False. Received: quiet='no'"):
        tfckpt.copy(source, str(tmp_path / "x"), quiet="no")


def test_a_damaged_source_checkpoint_is_reported_and_not_copied(source, tmp_path):
    src = tmp_path / "src"
    shutil.copytree(source, src)
    shard = next((src / "ckpt-000002").glob("ckpt.data-*"))
    data = bytearray(shard.read_bytes())
    data[len(data) // 2] ^= 0xFF  # same size: only reading the tensors finds it
    shard.write_bytes(bytes(data))
    dst = tmp_path / "dst"
    proc = cli("cp", src, dst)
    assert proc.returncode == 1, proc.stderr
    assert "ckpt-000002: DAMAGED in the source, not copied" in proc.stderr
    assert "4 copied, 0 already there, 1 damaged" in proc.stdout
    assert [r.name for r in tfckpt.open(str(dst)).checkpoints] == [
        "ckpt-000001",
        "ckpt-000003",
        "ckpt-000004",
        "ckpt-000005",
    ]
    assert intact(str(dst))
    assert not (src / ".damaged-ckpt-000002").exists()  # the source is only read

    # A damage marker at the destination keeps that name from being reused.
    (tmp_path / "marked").mkdir()
    (tmp_path / "marked" / ".damaged-ckpt-000002").write_text("bad")
    with pytest.raises(tfckpt.CheckpointError, match="ckpt-000002.*found damaged there"):
        tfckpt.copy(str(src), str(tmp_path / "marked"), which="ckpt-000002", quiet=True)


def test_unchanged_data_files_are_hard_linked_at_a_local_destination(tmp_path):
    keras.utils.set_random_seed(0)
    # A frozen 4 MiB kernel: a data file of its own (see tfckpt.store.shards).
    backbone = keras.layers.Dense(1024, activation="relu", trainable=False)
    model = keras.Sequential([keras.Input((1024,)), backbone, keras.layers.Dense(1)])
    model.compile(keras.optimizers.Adam(1e-2), "mse")
    x, y = np.ones((32, 1024), "float32"), np.ones((32, 1), "float32")
    src = str(tmp_path / "src")
    with tfckpt.CheckpointManager(src, model, keep_last=None) as manager:
        for epoch in range(1, 4):
            model.fit(x, y, epochs=1, verbose=0)
            manager.save(epoch=epoch)
    run = tfckpt.open(src)
    assert run.shared_bytes(run.latest) > 0  # the frozen kernel, stored once
    dst = str(tmp_path / "dst")
    tfckpt.copy(src, dst, quiet=True)
    copied = tfckpt.open(dst)
    for a, b in zip(run.checkpoints, copied.checkpoints):
        assert copied.shared_bytes(b) == run.shared_bytes(a)
    assert intact(dst)


def test_a_copy_of_a_finished_run_is_finished_so_a_watch_of_it_ends(source, tmp_path):
    assert is_finished(source)  # train.py's fit ended normally
    dst = str(tmp_path / "dst")
    tfckpt.copy(source, dst, quiet=True)
    assert is_finished(dst)
    # No timeout: it ends by itself, having yielded every copied checkpoint.
    with tfckpt.watch(dst, poll_interval=0.1) as records:
        steps = [r.step for r in records]
    assert steps == [r.step for r in tfckpt.open(source).checkpoints]
    # One checkpoint of a finished run is no run whose training finished.
    one = str(tmp_path / "one")
    tfckpt.copy(source, one, which="best", quiet=True)
    assert not is_finished(one)


def test_a_rotten_file_at_the_destination_is_never_linked_nor_skipped_as_there(tmp_path):
    keras.utils.set_random_seed(0)
    backbone = keras.layers.Dense(1024, activation="relu", trainable=False)  # own 4 MiB file
    model = keras.Sequential([keras.Input((1024,)), backbone, keras.layers.Dense(1)])
    model.compile(keras.optimizers.Adam(1e-2), "mse")
    x, y = np.ones((32, 1024), "float32"), np.ones((32, 1), "float32")
    src, dst = str(tmp_path / "src"), str(tmp_path / "dst")
    with tfckpt.CheckpointManager(src, model, keep_last=None) as manager:
        for epoch in (1, 2):
            model.fit(x, y, epochs=1, verbose=0)
            manager.save(epoch=epoch)
    first, second = tfckpt.open(src).checkpoints
    tfckpt.copy(src, dst, which=first.name, quiet=True)
    # A byte of the copy's kernel file rots, its modification time unchanged.
    there = tfckpt.open(dst).checkpoints[0]
    kernel = max(there.manifest["files"], key=lambda f: there.manifest["files"][f]["size"])
    path = os.path.join(there.directory, kernel)
    rot(path, os.path.getsize(path) // 2)
    # The second checkpoint's equal kernel is not linked to the rotten file.
    report = tfckpt.copy(src, dst, which=second.name, quiet=True)
    assert [r.name for r in report.copied] == [second.name]
    assert dict(tfckpt.verify(dst))[second.name] is None
    # A rerun does not take the rotten copy for one already there.
    with pytest.raises(tfckpt.CheckpointError, match=f"{first.name}.*there is damaged"):
        tfckpt.copy(src, dst, quiet=True)
