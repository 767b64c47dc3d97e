"""`CheckpointManager` driven directly, as a custom training loop does."""

import os

import numpy as np
import pytest
import tensorflow as tf
from support import make_model

import tfckpt


def built_model(seed=0):
    """A compiled model whose optimizer slots exist (as after a train step)."""
    model = make_model(seed=seed)
    model.optimizer.build(model.trainable_variables)
    return model


def weights(model):
    return [v.numpy().copy() for v in model.weights]


def test_save_restore_best_and_metadata(tmp_path):
    model = built_model()
    with tfckpt.CheckpointManager(tmp_path, model, monitor="val_loss", keep_last=2) as manager:
        saved = {}
        for epoch, loss in [(1, 0.5), (2, 0.3), (3, 0.4), (4, 0.45)]:
            for v in model.trainable_variables:
                v.assign(v + 1.0)
            record = manager.save(epoch=epoch, metrics={"val_loss": loss})
            saved[record.name] = weights(model)
            assert (record.epoch, record.metrics["val_loss"]) == (epoch, loss)
        # keep_last=2 and keep_best=1: epochs 2 (best), 3 and 4.
        kept = [(r.epoch, r.kept) for r in manager.checkpoints]
        assert [epoch for epoch, _ in kept] == [2, 3, 4]
        assert kept[0][1].startswith("best") and kept[-1][1].startswith("latest")
        assert manager.best_value == {"value": 0.3, "step": 0, "epoch": 2}
    fresh = built_model(seed=1)
    with tfckpt.CheckpointManager(tmp_path, fresh, monitor="val_loss") as manager:
        best = manager.restore("best")
        assert best.epoch == 2
        for a, b in zip(weights(fresh), saved[best.name]):
            np.testing.assert_array_equal(a, b)
        # The best value survives a new manager (it is in every manifest).
        assert manager.best_value["value"] == 0.3
        assert tf.train.latest_checkpoint(str(tmp_path)) == manager.latest.path


def test_supersede_replaces_the_checkpoint_of_the_same_point(tmp_path):
    model = built_model()
    with tfckpt.CheckpointManager(tmp_path, model, keep_last=None) as manager:
        first = manager.save(epoch=1)
        model.optimizer.learning_rate.assign(0.5)
        second = manager.save(epoch=1, supersede=True)
        assert [r.name for r in manager.checkpoints] == [second.name]
        assert not os.path.exists(first.directory)


def test_close_releases_the_directory(tmp_path):
    model = built_model()
    manager = tfckpt.CheckpointManager(tmp_path, model)
    manager.save(epoch=1)
    manager.close()
    assert not [n for n in os.listdir(tmp_path) if n.startswith(".tmp-")]
    with tfckpt.CheckpointManager(tmp_path, built_model()) as again:
        assert again.restore().epoch == 1


def test_incremental_is_on_for_local_disks_only(tmp_path):
    assert tfckpt.CheckpointManager(tmp_path / "a", make_model()).incremental is True
    with pytest.warns(UserWarning, match="saving full checkpoints"):
        remote = tfckpt.CheckpointManager("ram://manager-incremental", make_model())
    assert remote.incremental is False
    assert (
        tfckpt.CheckpointManager(tmp_path / "b", make_model(), incremental=False).incremental
        is False
    )
