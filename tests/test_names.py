"""Names users know: a checkpoint's variables by layer (or `objects=`) name
with the optimizer's slots under their variable, per-layer diffs of two
checkpoints (Run.diff, `tfckpt diff`, the notebook table and plot), a
subclassed model built for a restore keeping its paths, and errors that
never print tensor values."""

import json

import keras
import matplotlib
import numpy as np
import pytest
import tensorflow as tf
from support import fit, make_data

import tfckpt
from tfckpt import cli

matplotlib.use("Agg")


def frozen_base_model():
    inputs = keras.Input((8,))
    base = keras.layers.Dense(16, activation="relu", name="base", trainable=False)(inputs)
    outputs = keras.layers.Dense(1, activation="sigmoid", name="head")(base)
    model = keras.Model(inputs, outputs)
    model.compile(keras.optimizers.Adam(1e-2), "binary_crossentropy")
    return model


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    directory = tmp_path_factory.mktemp("names") / "run"
    fit(frozen_base_model(), directory, 3, make_data(), keep_last=None)
    return tfckpt.open(directory)


def test_variables_are_listed_by_layer_with_slots_under_them(run):
    variables = run.variables("latest")
    by_name = {v.name: v for v in variables if v.slot_of is None}
    assert {"base/kernel", "base/bias", "head/kernel", "head/bias"} <= set(by_name)
    assert by_name["head/kernel"].shape == (16, 1) and by_name["head/kernel"].dtype == "float32"
    assert by_name["head/kernel"].nbytes == 16 * 4
    # Adam's slots follow their variable; a frozen layer has none.
    names = [v.name for v in variables]
    at = names.index("head/kernel")
    slots = variables[at + 1 : at + 3]  # named by the optimizer (adam, adam_1, ...)
    assert [v.slot_of for v in slots] == ["head/kernel", "head/kernel"]
    assert [v.name.split("/")[1] for v in slots] == ["momentum", "velocity"]
    assert not [v for v in variables if v.slot_of == "base/kernel"]
    assert any(n.endswith("/iteration") for n in names) and "save_counter" in names
    # Every key of the checkpoint, once.
    keys = {k for k, _ in tf.train.list_variables(run.latest.path)} - {
        "_CHECKPOINTABLE_OBJECT_GRAPH"
    }
    assert sorted(v.key for v in variables) == sorted(keys)


def test_objects_are_listed_under_their_names(tmp_path):
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(2, name="dense")])
    model.compile(keras.optimizers.SGD(), "mse")
    ema = keras.Sequential([keras.Input((4,)), keras.layers.Dense(2, name="dense")])
    step = tf.Variable(7, dtype=tf.int64)
    with tfckpt.CheckpointManager(tmp_path, model, objects={"ema": ema, "step": step}) as m:
        m.save(step=1)
    names = [v.name for v in tfckpt.open(tmp_path).variables()]
    # Keras paths start with the model's name; the EMA copy's say whose they are.
    assert f"{model.name}/dense/kernel" in names and f"ema: {ema.name}/dense/kernel" in names
    assert "step" in names


def test_diff_says_per_layer_how_far_the_weights_moved(run):
    first, last = run.checkpoints[0], run.checkpoints[-1]
    changes = run.diff(first.name, last.name)
    rows = {c.layer: c for c in changes}
    assert set(rows) == {"base", "head"}
    assert rows["base"].change == 0 and rows["base"].relative == 0  # frozen
    assert rows["head"].change > 0 and rows["head"].relative > 0
    assert rows["head"].params == 16 + 1 and rows["base"].params == 8 * 16 + 16
    # The same numbers as computing them from the checkpoints by hand.
    a = tf.train.load_checkpoint(first.path)
    b = tf.train.load_checkpoint(last.path)
    keys = {v.name: v.key for v in run.variables(first.name)}
    delta = sum(
        float(np.sum((b.get_tensor(keys[n]) - a.get_tensor(keys[n])).astype(np.float64) ** 2))
        for n in ("head/kernel", "head/bias")
    )
    assert rows["head"].change == pytest.approx(np.sqrt(delta))
    text = repr(changes)
    assert text.splitlines()[0] == f"{first.name} -> {last.name}" and "head" in text
    assert "<table>" in changes._repr_html_() and "<td>head</td>" in changes._repr_html_()
    ax = changes.plot()
    assert sorted(t.get_text() for t in ax.get_yticklabels()) == ["base", "head"]


def test_diff_on_the_command_line(run, capsys):
    first, last = run.checkpoints[0], run.checkpoints[-1]
    assert cli.main(["diff", run.directory, first.name, last.name, "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert (out["a"], out["b"]) == (first.name, last.name)
    assert {r["layer"] for r in out["layers"]} == {"base", "head"}
    assert cli.main(["diff", run.directory, str(first.step), "latest"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[1].split()[:2] == ["layer", "params"]


class MLP(keras.Model):
    def __init__(self):
        super().__init__(name="mlp")
        self.hidden = keras.layers.Dense(3, name="hidden")

    def call(self, x):
        return self.hidden(x)


def test_a_subclassed_model_built_for_a_restore_keeps_its_paths(tmp_path):
    model = MLP()
    model.compile(keras.optimizers.Adam(), "mse")
    model.fit(np.ones((8, 4)), np.ones((8, 3)), epochs=1, verbose=0)
    with tfckpt.CheckpointManager(tmp_path, model) as manager:
        manager.save()
    fresh = MLP()
    fresh.compile(keras.optimizers.Adam(), "mse")
    tfckpt.restore(fresh, tmp_path)
    assert fresh.built
    assert [v.path for v in fresh.weights] == ["mlp/hidden/kernel", "mlp/hidden/bias"]
    for a, b in zip(model.weights, fresh.weights):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_an_incompatible_checkpoint_error_prints_no_values(tmp_path):
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3)])
    model.compile(keras.optimizers.Adam(), "mse")
    with tfckpt.CheckpointManager(tmp_path, model) as manager:
        manager.save()
    other = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3), keras.layers.Dense(2)])
    other.compile(keras.optimizers.Adam(), "mse")
    for v in other.weights:
        v.assign(np.full(v.shape, 0.123456, "float32"))
    with pytest.raises(tfckpt.IncompatibleCheckpointError) as e:
        tfckpt.restore(other, tmp_path)
    assert "0.123456" not in str(e.value) and "numpy=" not in str(e.value)
    assert "value=" not in str(e.value)
