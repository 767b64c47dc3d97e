"""Integrity under attack: kill -9 fuzzing, corrupted files, a full disk."""

import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
import warnings
import zlib

import numpy as np
import pytest
import tensorflow as tf
from support import SCRIPTS, make_model, run_script, script_env

import tfckpt
from tfckpt.store import fs
from tfckpt.store.checkpoint_store import CheckpointStore

# ---- kill -9 fuzzing ---------------------------------------------------------


def first_line(proc: subprocess.Popen) -> str:
    """The first line of `proc`'s unbuffered stdout, read byte by byte: a
    buffered readline could take later lines along, which `communicate` (it
    reads the raw pipe) would then never see."""
    line = b""
    while not line.endswith(b"\n"):
        byte = proc.stdout.read(1)
        if not byte:
            break
        line += byte
    return line.decode()


def fuzz(directory, kills, seed, epochs=3, extra=()):
    """Starts the training script, SIGKILLs it at a random moment, restarts it,
    `kills` times; then lets it finish. Returns counts for the report."""
    rng = random.Random(seed)
    stats = {"kills": 0, "mid_save": 0, "restores": 0}
    last_saved = 0
    cmd = [
        sys.executable,
        str(SCRIPTS / "fuzz_train.py"),
        str(directory),
        "--epochs",
        str(epochs),
        *extra,
    ]
    while True:
        finishing = stats["kills"] >= kills
        before = tfckpt.open(str(directory)).latest if directory.exists() else None
        stats["mid_save"] += bool(
            directory.exists() and CheckpointStore(str(directory)).leftovers()
        )
        proc = subprocess.Popen(
            cmd, env=script_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, bufsize=0
        )
        restored = int(first_line(proc).split()[1])  # "restored STEP"
        # Never backwards: at least the newest committed step seen, exactly the newest on disk.
        assert restored >= last_saved
        assert restored == (before.step if before else 0)
        stats["restores"] += before is not None
        if finishing:
            out, err = (text.decode() for text in proc.communicate(timeout=600))
            assert proc.returncode == 0, err
            lines = out.split("\n")
            assert lines[-2].startswith("done"), out
            return stats, int(lines[-2].split()[1])
        time.sleep(rng.uniform(0.3, 2.5))  # warm-up is ~1.8 s, then a save every ~0.25 s
        proc.send_signal(signal.SIGKILL)
        out = proc.communicate()[0].decode()
        if proc.returncode == 0:  # finished before the kill: start a fresh run
            shutil.rmtree(directory)
            last_saved = 0
            continue
        stats["kills"] += 1
        saved = [int(line.split()[1]) for line in out.splitlines() if line.startswith("saved")]
        last_saved = max([last_saved, *saved])
        # After every kill: the directory verifies, nothing torn is visible.
        results = tfckpt.verify(str(directory))
        assert all(problem is None for _, problem in results), results
        assert results or last_saved == 0


def check_fuzz(tmp_path, kills, seed, extra=()):
    d = tmp_path / "run"
    stats, final_step = fuzz(d, kills, seed, extra=extra)
    assert stats["kills"] == kills
    run = tfckpt.open(str(d))
    assert run.latest.epoch == 3 and run.latest.batch == 0 and run.latest.step == final_step
    assert final_step == 3 * 16  # resumes never trained a batch twice
    assert CheckpointStore(str(d)).leftovers() == []
    assert tf.train.latest_checkpoint(str(d)) == run.latest.path
    print(f"\nfuzz: {stats}")
    return stats


def test_kill_9_fuzzing(tmp_path):
    check_fuzz(tmp_path, kills=8, seed=1)


def test_kill_9_fuzzing_async_saves(tmp_path):
    check_fuzz(tmp_path, kills=4, seed=3, extra=["--async-save"])


@pytest.mark.soak
def test_kill_9_fuzzing_soak(tmp_path):
    check_fuzz(tmp_path, kills=200, seed=2)


# ---- corruption ----------------------------------------------------------------


def truncate(path):
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def flip(path):
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))


def delete(path):
    path.unlink()


FILES = ["ckpt.data-00000-of-00001", "ckpt.index", "manifest.json", "state.json"]


@pytest.fixture(scope="module")
def three_checkpoints(tmp_path_factory):
    d = tmp_path_factory.mktemp("pristine")
    model = make_model()
    cb = tfckpt.CheckpointCallback(str(d), keep_last=None, verbose=0)
    weights = {}
    x, y = np.random.default_rng(0).normal(size=(64, 8)).astype("float32"), np.zeros(64)
    for epoch in (1, 2, 3):
        model.fit(
            x,
            y,
            epochs=epoch,
            initial_epoch=epoch - 1,
            verbose=0,
            callbacks=[cb],
            validation_data=(x[:8], y[:8]),
        )
        weights[epoch] = [w.numpy() for w in model.weights]
    return d, weights


@pytest.mark.parametrize("damage", [truncate, flip, delete])
@pytest.mark.parametrize("fname", FILES)
def test_corruption_is_detected_and_falls_back(tmp_path, three_checkpoints, fname, damage):
    pristine, weights = three_checkpoints
    d = tmp_path / "run"
    shutil.copytree(pristine, d)
    newest = sorted(d.glob("ckpt-*"))[-1]
    damage(newest / fname)

    verdicts = dict(tfckpt.verify(str(d)))
    assert verdicts[newest.name] is not None and list(verdicts.values()).count(None) == 2

    model = make_model(seed=7)
    with pytest.warns(UserWarning, match=rf"skipping {newest.name}") as caught:
        record = tfckpt.restore(model, str(d))
    assert record.epoch == 2
    for a, b in zip(model.weights, weights[2]):
        np.testing.assert_array_equal(a.numpy(), b)
    assert len([w for w in caught if newest.name in str(w.message)]) == 1  # one clear warning
    # The damaged checkpoint is kept for inspection; a reader writes nothing
    # into the run directory (only the writer marks damage, below).
    assert newest.exists()
    assert not list(d.glob(".damaged-*"))

    # A rerun trains on with keep_last=1: it deletes intact old checkpoints,
    # never the damaged one.
    model = make_model(seed=7)
    cb = tfckpt.CheckpointCallback(str(d), keep_last=1, keep_best=0, verbose=0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        history = model.fit(
            *np.split(np.zeros((16, 9), "float32"), [8], axis=1),
            epochs=3,
            verbose=0,
            callbacks=[cb],
            validation_split=0.5,
        )
    assert history.epoch == [2]  # resumed from the newest intact checkpoint
    assert newest.exists()
    assert [r.epoch for r in tfckpt.open(str(d)).checkpoints] == [3]
    assert tf.train.latest_checkpoint(str(d)) == tfckpt.open(str(d)).latest.path


def test_all_damaged_raises_and_deletes_nothing(tmp_path, three_checkpoints):
    pristine, _ = three_checkpoints
    d = tmp_path / "run"
    shutil.copytree(pristine, d)
    for ckpt in d.glob("ckpt-*"):
        flip(ckpt / "ckpt.data-00000-of-00001")
    before = sorted(p.name for p in d.iterdir())
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(tfckpt.NoIntactCheckpointError, match="Nothing was deleted"):
            tfckpt.restore(make_model(), str(d))
    assert {p.name for p in d.iterdir()} >= set(before)
    proc = run_script("../../tfckpt/cli.py", "verify", d)
    assert proc.returncode == 1 and "0 intact, 3 damaged" in proc.stdout


# ---- a full disk -----------------------------------------------------------------


def test_disk_full_raises_clearly_and_keeps_earlier_checkpoints(tmp_path):
    d = tmp_path / "run"
    proc = run_script("disk_full.py", d, "raise", check=True)
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    message = result["error"]
    assert f"Could not save checkpoint ckpt-000002 in '{d}'" in message
    assert "File too large. The checkpoint needs about 3.0 MiB" in message  # EFBIG, real
    assert "{{function_node" not in message and "earlier checkpoints are intact" in message
    run = tfckpt.open(str(d))
    assert [r.name for r in run.checkpoints] == ["ckpt-000001"]
    assert CheckpointStore(str(d)).leftovers() == []
    assert all(problem is None for _, problem in tfckpt.verify(str(d)))


def test_disk_full_warn_option_trains_on(tmp_path):
    d = tmp_path / "run"
    proc = run_script("disk_full.py", d, "warn", check=True)
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["epochs_run"] == [0, 1, 2]
    assert "Training goes on (on_save_error='warn')" in proc.stderr
    assert [r.name for r in tfckpt.open(str(d)).checkpoints] == ["ckpt-000001"]
    assert CheckpointStore(str(d)).leftovers() == []


def test_not_enough_free_space_fails_before_writing(tmp_path):
    # The pre-check compares with the free space the OS reports (statvfs) for
    # this directory; a checkpoint 1 GiB larger than that cannot fit.
    free = fs.free_bytes(str(tmp_path))
    assert free is not None
    with pytest.raises(tfckpt.CheckpointWriteError, match="Not enough space.*Nothing was written"):
        CheckpointStore(str(tmp_path)).commit(lambda prefix: None, {}, expected_size=free + 2**30)
    assert list(tmp_path.iterdir()) == []


def test_a_manifest_naming_files_outside_its_checkpoint_is_not_followed(tmp_path, data):
    # A run directory from someone else is untrusted: a manifest whose file
    # names lead elsewhere is not a checkpoint, and nothing outside is read.
    d = tmp_path / "run"
    model = make_model()
    model.fit(
        *data,
        epochs=2,
        verbose=0,
        callbacks=[tfckpt.CheckpointCallback(str(d), monitor=None, verbose=0)],
    )
    secret = tmp_path / "secret.bin"
    secret.write_bytes(b"x" * 10)
    path = d / "ckpt-000002" / "manifest.json"
    manifest = json.loads(path.read_text())
    manifest["files"]["../../secret.bin"] = {"size": 10, "crc32": zlib.crc32(b"x" * 10)}
    body = {k: v for k, v in manifest.items() if k != "checksum"}
    manifest["checksum"] = zlib.crc32(json.dumps(body, sort_keys=True).encode())
    path.write_text(json.dumps(manifest))
    run = tfckpt.open(str(d))
    assert [r.name for r in run.checkpoints] == ["ckpt-000001"]
    assert "outside the checkpoint" in dict((p.name, p.reason) for p in run.problems)["ckpt-000002"]


def test_a_flipped_byte_among_a_shards_first_bytes_is_damage_not_a_read_error(tmp_path):
    # A string tensor's record (TF's object graph) starts with its length and
    # that length's own CRC: a flipped byte there makes TF say "The length
    # checksum does not match", which is damage like any other checksum, never
    # an I/O error to retry. The older checkpoint is a full one, so the newest
    # (incremental, a data file per large tensor) shares no file with it.
    model = make_model()
    with tfckpt.CheckpointManager(str(tmp_path), model, incremental=False) as manager:
        older = manager.save(epoch=1)
    with tfckpt.CheckpointManager(str(tmp_path), model, keep_last=None) as manager:
        newest = manager.save(epoch=2)
    shards = [f for f in newest.manifest["files"] if ".data-" in f]
    for shard in shards:
        path = os.path.join(newest.directory, shard)
        original = open(path, "rb").read()
        for offset in range(min(6, len(original))):
            damaged = bytearray(original)
            damaged[offset] ^= 0xFF
            with open(path, "wb") as f:
                f.write(damaged)
            problem = dict(tfckpt.verify(tmp_path))[newest.name]
            assert problem and "corrupted" in problem, (shard, offset, problem)
            with pytest.warns(UserWarning, match="damaged"):
                assert tfckpt.restore(make_model(), str(tmp_path)).name == older.name
        with open(path, "wb") as f:
            f.write(original)
