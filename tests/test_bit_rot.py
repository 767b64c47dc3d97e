"""Bit rot, swept: one flipped bit at a time, in each kind of file of a run
whose checkpoints share a data file (incremental sharing), with the
modification time put back as a media error leaves it.

After each flip: the flip is found (every file tfckpt writes is checksummed)
and it costs at most the checkpoints that share the flipped file; restore
falls back to the newest intact checkpoint, with its exact weights; and the
next save, from correct weights in memory, succeeds and is intact (the
rotten file is never linked into it).

The CI run samples offsets in each file (its first and last bytes, and
random ones); `-m soak` sweeps many more."""

import os
import random
import shutil
import subprocess
import warnings

import keras
import numpy as np
import pytest
from support import digest, rot

import tfckpt
from tfckpt.errors import NoIntactCheckpointError


def frozen_model(seed=0):
    """A frozen 4 MiB kernel (a data file of its own, shared by every save)
    under a small trainable head."""
    keras.utils.set_random_seed(seed)
    model = keras.Sequential(
        [
            keras.Input((1024,)),
            keras.layers.Dense(1024, activation="relu", trainable=False),
            keras.layers.Dense(4),
            keras.layers.Dense(1),
        ]
    )
    model.compile(keras.optimizers.Adam(1e-2), "mse")
    return model


@pytest.fixture(scope="module")
def base_run(tmp_path_factory):
    """Three checkpoints sharing the frozen kernel's file, each with state
    (JSON and arrays); the weights of each, and the model that saved them."""
    directory = tmp_path_factory.mktemp("bit-rot") / "run"
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(32, 1024)).astype("float32"), rng.normal(size=(32, 1))
    model = frozen_model()
    weights = {}
    with tfckpt.CheckpointManager(str(directory), model, keep_last=None, monitor="loss") as manager:
        for epoch in (1, 2, 3):
            loss = model.fit(x, y, epochs=1, verbose=0).history["loss"][-1]
            record = manager.save(
                epoch=epoch,
                metrics={"loss": loss},
                state={"history": [{"epoch": epoch}], "seen": np.arange(epoch * 10)},
            )
            weights[record.name] = digest(model)
    records = tfckpt.open(directory).checkpoints
    shared = [f for f, e in records[-1].manifest["files"].items() if e.get("shared")]
    assert shared, "the frozen kernel's file is shared"
    return directory, records, weights, model


def file_kinds(records):
    """One file of each kind (relative to the run), the shared one included."""
    newest = records[-1]
    files = newest.manifest["files"]
    shared = next(f for f, e in files.items() if e.get("shared"))
    own = next(f for f, e in files.items() if ".data-" in f and not e.get("shared"))
    kinds = ["manifest.json", "ckpt.index", own, shared, "state.json", "state-arrays.npz"]
    return [os.path.join(newest.name, f) for f in kinds] + ["checkpoint", ".finished"]


def offsets(size, rng, sampled):
    """The first and last bytes and `sampled` random ones (all of a small file)."""
    if size <= 2 * sampled:
        return list(range(size))
    ends = set(range(min(8, size))) | set(range(max(0, size - 8), size))
    return sorted(ends | set(rng.sample(range(size), sampled)))


def sharers(run, relative):
    """The checkpoints with a name for the flipped file (hard links)."""
    inode = os.stat(run / relative).st_ino
    return {
        entry.name
        for entry in run.iterdir()
        if entry.name.startswith("ckpt-")
        and any(os.stat(f).st_ino == inode for f in entry.iterdir())
    }


def sweep(base_run, tmp_path, sampled, seed):
    directory, records, weights, model = base_run
    names = [r.name for r in records]
    rng = random.Random(seed)
    flips = 0
    for relative in file_kinds(records):
        size = os.path.getsize(directory / relative)
        for offset in offsets(size, rng, sampled):
            run = tmp_path / "run"
            shutil.rmtree(run, ignore_errors=True)
            subprocess.run(["cp", "-a", str(directory), str(run)], check=True)  # links kept
            rot(run / relative, offset)
            where = f"{relative} byte {offset} of {size}"
            in_checkpoint = relative.startswith("ckpt-")
            allowed = sharers(run, relative) if in_checkpoint else set()

            damaged = {name for name, problem in tfckpt.verify(run) if problem}
            assert damaged <= allowed, where
            if in_checkpoint:
                assert damaged, f"{where}: not found"
            intact = [name for name in names if name not in damaged]

            fresh = frozen_model(seed=1)
            fresh.optimizer.build(fresh.trainable_variables)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                if not intact:  # every checkpoint shared the flipped file
                    with pytest.raises(NoIntactCheckpointError):
                        tfckpt.restore(fresh, run)
                else:
                    restored = tfckpt.restore(fresh, run, optimizer=fresh.optimizer)
                    assert restored.name == intact[-1], where
                    assert digest(fresh) == weights[restored.name], where

            with tfckpt.CheckpointManager(str(run), model, keep_last=None) as manager:
                saved = manager.save(epoch=4)
            after = dict(tfckpt.verify(run))
            assert after[saved.name] is None, f"{where}: the next save is {after[saved.name]}"
            assert {name for name, problem in after.items() if problem} == damaged, where
            flips += 1
    return flips


def test_a_flipped_bit_in_any_file_costs_at_most_the_checkpoints_sharing_it(base_run, tmp_path):
    assert sweep(base_run, tmp_path, sampled=5, seed=0) >= 60


@pytest.mark.soak
def test_a_flipped_bit_in_any_file_soak(base_run, tmp_path):
    assert sweep(base_run, tmp_path, sampled=150, seed=1) >= 1000
