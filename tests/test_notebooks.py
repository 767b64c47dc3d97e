"""The notebooks run end to end (in a temporary working directory, on the
Python running the tests) and produce what they claim."""

import json
import sys

import keras
import nbformat
import numpy as np
from nbclient import NotebookClient
from support import ROOT, script_env

import tfckpt

NOTEBOOKS = ROOT / "notebooks"

# Run first by the test only (not part of the notebook): which Python runs it.
PROBE = "import json, os, sys; print(json.dumps({'executable': sys.executable, 'backend': os.environ.get('MPLBACKEND')}))"


def execute(name, cwd):
    """Runs notebooks/NAME in `cwd`; returns the probe's output, the executed
    notebook and the summary cell's JSON."""
    nb = nbformat.read(NOTEBOOKS / name, as_version=4)
    assert all(
        not c.get("outputs") and c.get("execution_count") is None
        for c in nb.cells
        if c.cell_type == "code"
    ), f"{name} is committed with outputs"
    nb.cells.insert(0, nbformat.v4.new_code_cell(PROBE))
    client = NotebookClient(
        nb, kernel_name="python3", timeout=240, resources={"metadata": {"path": str(cwd)}}
    )
    client.execute(env=script_env(MPLBACKEND="Agg", TF_CPP_MIN_LOG_LEVEL=3))
    probe = json.loads(nb.cells[0].outputs[0]["text"])
    summary_cell = next(c for c in nb.cells if "summary" in c.metadata.get("tags", []))
    summary = json.loads(summary_cell.outputs[-1]["text"].strip().splitlines()[-1])
    return probe, nb, summary


def outputs_of(nb, mime):
    return [
        o["data"][mime]
        for c in nb.cells
        if c.cell_type == "code"
        for o in c.get("outputs", [])
        if mime in o.get("data", {})
    ]


def test_quickstart(tmp_path):
    # What an earlier run of the notebook left behind: a rerun starts from scratch.
    (tmp_path / "runs" / "quickstart" / "ckpt-000042").mkdir(parents=True)
    (tmp_path / "runs" / "quickstart-exports").mkdir()
    (tmp_path / "runs" / "quickstart-exports" / "digits.keras").write_text("old")

    probe, nb, summary = execute("quickstart.ipynb", tmp_path)
    assert probe == {"executable": sys.executable, "backend": "Agg"}

    # Interrupted when epoch 4 began, resumed by a fresh model: epochs 4..8 only.
    assert summary["resumed_epochs"] == [4, 5, 6, 7, 8]
    assert summary["final_epoch"] == 8 and summary["history_epochs"] == list(range(1, 9))
    assert summary["weights_equal"] and summary["predictions_equal"]
    assert any(
        '<table class="tfckpt">' in h and "val_accuracy" in h for h in outputs_of(nb, "text/html")
    )
    assert summary["plot"] == {"lines": 1, "ylabel": "val_accuracy"}

    # Checked again from here, on what the notebook left on disk.
    run = tfckpt.open(tmp_path / "runs" / "quickstart")
    assert run.latest.epoch == 8 and run.best.name == summary["best"]
    assert run.best.metrics["val_accuracy"] == summary["best_val_accuracy"]
    assert run.best.metrics["val_accuracy"] == max(v for v in run.history["val_accuracy"])
    loaded = keras.saving.load_model(tmp_path / "runs" / "quickstart-exports" / "digits.keras")
    fresh = keras.models.clone_model(loaded)
    tfckpt.restore(fresh, str(tmp_path / "runs" / "quickstart"), "best")
    for a, b in zip(loaded.get_weights(), fresh.get_weights()):
        np.testing.assert_array_equal(a, b)


def test_experiment(tmp_path):
    _, nb, summary = execute("experiment.ipynb", tmp_path)
    base = tfckpt.open(tmp_path / "runs" / "experiment" / "base")
    assert summary["base_best"] == base.best.name
    names = ["lr=0.001", "lr=0.01"]
    fork_point = summary["base_best_epoch"]
    for name in names:
        # Each fork records the base's best checkpoint as its parent, and
        # carries on the base's history up to it, then four epochs of its own.
        fork = tfckpt.open(tmp_path / "runs" / "experiment" / name)
        assert summary["parents"][name]["name"] == base.best.name
        assert summary["parents"][name]["optimizer"] is False
        assert fork.lineage == [summary["parents"][name]]
        assert summary["fork_epochs"][name] == list(range(1, fork_point + 5))
        assert fork.history["val_loss"][:fork_point] == base.history["val_loss"][:fork_point]
    # The learning rate is the fork's own (the base's optimizer is not restored).
    assert summary["fork_val_loss"]["lr=0.001"] != summary["fork_val_loss"]["lr=0.01"]
    assert [label for label in summary["legend"] if label in names] == names
    assert len(outputs_of(nb, "text/html")) == 1  # the base run's table
