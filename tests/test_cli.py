"""The `tfckpt` command line on a real run directory.

Exit statuses, stderr and the writer lock are checked through real processes
(the installed `tfckpt` script and `python -m tfckpt.cli`), started together
because each one pays TensorFlow's import; output details are checked by
calling `tfckpt.cli.main` in this process.
"""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import keras
import numpy as np
import pytest
import tensorflow as tf
from support import architecture, fit, make_data, make_model, script_env

import tfckpt
from tfckpt import cli
from tfckpt.browse.display import human_size
from tfckpt.store.lock import DirectoryLock

MODEL_DEF = """
import keras

def build():
    return keras.Sequential([keras.Input((8,)), keras.layers.Dense(16, activation="relu"),
                             keras.layers.Dense(1, activation="sigmoid")])


def wider():
    return keras.Sequential([keras.Input((8,)), keras.layers.Dense(32), keras.layers.Dense(1)])
"""


def tfckpt_command():
    script = Path(sys.executable).with_name("tfckpt")
    return [str(script)] if script.exists() else [sys.executable, "-m", "tfckpt.cli"]


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    """A run of 4 epochs (every epoch kept), a model definition file and the
    architecture saved as .keras."""
    root = tmp_path_factory.mktemp("cli")
    d = root / "run"
    fit(make_model(), d, 4, make_data(), monitor="val_loss", keep_last=None)
    (root / "model_def.py").write_text(MODEL_DEF)
    architecture().save(root / "arch.keras")
    (root / "not_a_run").mkdir()
    (root / "not_a_run" / "notes.txt").write_text("hello")
    return d


@pytest.fixture(scope="module")
def processes(run_dir):
    """Every subprocess of this file, run at the same time: name -> CompletedProcess."""
    root = run_dir.parent
    shutil.copytree(run_dir, root / "locked")
    commands = {
        "ls": [*tfckpt_command(), "ls", run_dir],
        "info_missing_step": [sys.executable, "-m", "tfckpt.cli", "info", run_dir, "999"],
        "ls_missing_dir": [*tfckpt_command(), "ls", root / "nope"],
        "prune_locked": [*tfckpt_command(), "prune", root / "locked", "--keep-last", "1"],
        "ls_default_logging": [*tfckpt_command(), "ls", run_dir],
    }
    # As a user runs it: no TF_CPP_MIN_LOG_LEVEL of their own.
    default_logging = {k: v for k, v in script_env().items() if k != "TF_CPP_MIN_LOG_LEVEL"}
    lock = DirectoryLock(str(root / "locked"))  # this process is the live writer
    try:
        started = {
            name: subprocess.Popen(
                [str(c) for c in command],
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
                env=default_logging if name == "ls_default_logging" else script_env(),
            )
            for name, command in commands.items()
        }
        done = {}
        for name, proc in started.items():
            stdout, stderr = proc.communicate(timeout=300)
            done[name] = subprocess.CompletedProcess(proc.args, proc.returncode, stdout, stderr)
    finally:
        lock.release()
    return done


def assert_one_line_error(proc, status, *fragments):
    assert proc.returncode == status, (proc.stdout, proc.stderr)
    assert "Traceback" not in proc.stderr
    # TensorFlow's own start-up lines may come first; ours is one line, the last.
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("tfckpt: "), proc.stderr
    for fragment in fragments:
        assert fragment in last, last


def run_main(capsys, *argv):
    status = cli.main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return status, out, err


# ---- through real processes ----------------------------------------------------


def test_ls_lists_the_run(processes, run_dir):
    proc = processes["ls"]
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.strip().splitlines()
    assert lines[0].split()[:7] == ["name", "step", "epoch", "batch", "size", "shared", "val_loss"]
    run = tfckpt.open(run_dir)
    assert [line.split()[0] for line in lines[1:]] == [r.name for r in run.checkpoints]
    best_line = next(line for line in lines if line.startswith(run.best.name))
    assert f"{run.best.metrics['val_loss']:.6g} *" in best_line
    # Sizes as people read them (`--json` keeps bytes).
    assert best_line.split()[4:6] == human_size(run.best.size).split()
    assert best_line.split()[5] == "KiB"


def test_the_command_is_quiet_about_tensorflow_start_up(processes):
    # TensorFlow logs its start-up (absl's preamble, oneDNN, CPU instructions)
    # before its log level is read; none of it comes above the table.
    quiet = processes["ls_default_logging"]
    assert quiet.returncode == 0 and quiet.stderr == ""
    assert quiet.stdout == processes["ls"].stdout


def test_a_selection_that_matches_nothing_exits_1(processes):
    assert_one_line_error(
        processes["info_missing_step"],
        1,
        "which=999",
        "Available: ckpt-000001 (step 6)",
        "epochs with an epoch-end checkpoint: 1, 2, 3, 4.",
    )


def test_a_missing_directory_exits_2(processes, run_dir):
    assert_one_line_error(
        processes["ls_missing_dir"], 2, "No checkpoint directory at", str(run_dir.parent / "nope")
    )


def test_prune_on_a_live_run_fails_clearly_and_deletes_nothing(processes, run_dir):
    assert_one_line_error(
        processes["prune_locked"],
        1,
        "Cannot prune while a writer is active",
        f"pid {os.getpid()} on host",
    )
    assert len(tfckpt.open(run_dir.parent / "locked").checkpoints) == 4


# ---- in this process -------------------------------------------------------------


def test_info_json_has_metadata_files_and_variables(run_dir, capsys):
    status, out, _ = run_main(capsys, "info", run_dir, "best", "--json")
    assert status == 0
    info = json.loads(out)
    run = tfckpt.open(run_dir)
    best = run.best
    assert (info["name"], info["step"], info["epoch"], info["batch"]) == (
        best.name,
        best.step,
        best.epoch,
        best.batch,
    )
    assert info["metrics"] == dict(best.metrics) and info["path"] == best.path
    assert info["size"] == best.size and info["kept"] == best.kept and info["best"] is True
    assert info["latest"] is (best.name == run.latest.name)
    assert info["files"] == dict(best.manifest["files"])
    shapes = {name: shape for name, shape in tf.train.list_variables(best.path)}
    listed = {v["key"]: (v["shape"], v["dtype"]) for v in info["variables"]}
    assert listed == {
        n: (s, "int64" if n.startswith(("save_counter", "optimizer/_iterations")) else "float32")
        for n, s in shapes.items()
        if n != "_CHECKPOINTABLE_OBJECT_GRAPH"
    }
    assert [8, 16] in [shape for shape, _ in listed.values()]
    # Under the names users know: the layer's path, Adam's slots under it.
    names = {v["name"]: v for v in info["variables"]}
    kernel = next(n for n, v in names.items() if v["shape"] == [8, 16] and not v["slot_of"])
    assert kernel.endswith("/kernel") and "ATTRIBUTES" not in kernel
    slots = [v["name"].split("/")[1] for v in info["variables"] if v["slot_of"] == kernel]
    assert slots == ["momentum", "velocity"]
    assert names[kernel]["nbytes"] == 8 * 16 * 4


def test_prune_json(run_dir, tmp_path, capsys):
    shutil.copytree(run_dir, tmp_path / "to_prune")
    status, out, _ = run_main(
        capsys, "prune", tmp_path / "to_prune", "--keep-last", 1, "--keep-best", 1, "--json"
    )
    assert status == 0
    report = json.loads(out)
    run = tfckpt.open(run_dir)
    kept = {run.latest.name, run.best.name}
    assert report["dry_run"] is False
    assert [r["name"] for r in report["kept"]] == [
        r.name for r in run.checkpoints if r.name in kept
    ]
    assert [r["name"] for r in report["deleted"]] == [
        r.name for r in run.checkpoints if r.name not in kept
    ]
    assert report["bytes_freed"] == sum(r["size"] for r in report["deleted"])
    assert report["damaged"] == []
    pruned = tfckpt.open(tmp_path / "to_prune")
    assert [r.name for r in pruned.checkpoints] == [r["name"] for r in report["kept"]]


def test_export_saved_model_from_a_keras_architecture(run_dir, tmp_path, capsys):
    out = tmp_path / "serving"
    status, stdout, _ = run_main(
        capsys, "export", run_dir, out, "--model-from", run_dir.parent / "arch.keras", "--epoch", 2
    )
    record = tfckpt.open(run_dir).select(epoch=2)[0]
    assert status == 0
    assert f"exported {record.name} (step {record.step}, epoch 2) to {out}" in stdout
    served = tf.saved_model.load(str(out))
    model = make_model(seed=9)
    tfckpt.restore(model, str(run_dir), epoch=2)
    for a, b in zip(served.variables, model.weights):
        np.testing.assert_array_equal(a.numpy(), b.numpy())


def test_info_text(run_dir, capsys):
    run = tfckpt.open(run_dir)
    status, out, _ = run_main(capsys, "info", run_dir, "--epoch", 2)
    record = run.select(epoch=2)[0]
    lines = out.splitlines()
    assert status == 0 and lines[0].startswith(record.name)
    fields = {
        line.split()[0]: line.split(None, 1)[1]
        for line in lines[1:]
        if line.startswith("  ") and not line.startswith("   ")
    }
    assert fields["step"] == str(record.step) and fields["epoch"] == "2" and fields["batch"] == "0"
    assert fields["path"] == record.path and fields["kept"] == record.kept
    assert f"({record.size} bytes)" in fields["size"] and "KiB" in fields["size"]
    assert f"val_loss={record.metrics['val_loss']:.6g}" in fields["metrics"]
    assert "ckpt.index (" in fields["files"] and "manifest.json" not in fields["files"]
    n = len(tf.train.list_variables(record.path)) - 1
    assert f"variables ({n}):" in lines
    assert any(
        line.split()[1:] == ["float32", "[8,", "16]", "512", "B"] and "/kernel" in line
        for line in lines
    )
    assert any(line.split()[0].endswith("/momentum") for line in lines if "float32" in line)

    status, out, _ = run_main(capsys, "info", run_dir)  # the latest by default
    assert status == 0 and out.startswith(f"{run.latest.name}  (")


def test_ls_json_and_verify(run_dir, capsys):
    status, out, _ = run_main(capsys, "ls", run_dir, "--json")
    rows = json.loads(out)
    run = tfckpt.open(run_dir)
    assert status == 0 and [r["name"] for r in rows] == [r.name for r in run.checkpoints]
    assert [r["name"] for r in rows if r["best"]] == [run.best.name]
    assert [r["size"] for r in rows] == [r.size for r in run.checkpoints]  # bytes
    status, out, _ = run_main(capsys, "verify", run_dir)
    assert status == 0 and out.strip().endswith("4 intact, 0 damaged")


def test_prune_dry_run_text(run_dir, tmp_path, capsys):
    d = tmp_path / "run"
    shutil.copytree(run_dir, d)
    status, out, _ = run_main(capsys, "prune", d, "--keep-last", 2, "--dry-run")
    assert status == 0
    lines = out.strip().splitlines()
    assert [line.split()[2] for line in lines[:-1] if line.startswith("would delete")] == [
        "ckpt-000001",
        "ckpt-000002",
    ]
    assert [line.split()[1] for line in lines if line.startswith("keep ")] == [
        "ckpt-000003",
        "ckpt-000004",
    ]
    assert lines[-1].startswith("would delete 2, keep 2: ") and lines[-1].endswith("would be freed")
    assert len(tfckpt.open(d).checkpoints) == 4
    status, out, _ = run_main(capsys, "prune", d, "--keep-last", 2)
    assert status == 0 and out.strip().splitlines()[-1].startswith("deleted 2, kept 2: ")
    assert len(tfckpt.open(d).checkpoints) == 2


def test_export_from_a_python_function(run_dir, capsys):
    root = run_dir.parent
    out = root / "best.keras"
    status, stdout, _ = run_main(
        capsys, "export", run_dir, out, "--model-from", f"{root / 'model_def.py'}:build"
    )
    best = tfckpt.open(run_dir).best
    assert status == 0 and stdout.startswith(f"exported {best.name}")
    loaded = keras.saving.load_model(out)
    reference = make_model(seed=3)
    tfckpt.restore(reference, str(run_dir), "best")
    for a, b in zip(loaded.get_weights(), reference.get_weights()):
        np.testing.assert_array_equal(a, b)
    status, _, err = run_main(
        capsys,
        "export",
        run_dir,
        out,
        "--model-from",
        f"{root / 'model_def.py'}:build",
        "--which",
        "latest",
    )
    assert status == 2 and "already exists. Pass --overwrite" in err
    status, _, _ = run_main(
        capsys,
        "export",
        run_dir,
        root / "step18.weights.h5",
        "--model-from",
        f"{root / 'model_def.py'}:build",
        "--which",
        "18",
    )
    assert status == 0
    model, reference = keras.saving.load_model(root / "arch.keras"), make_model(seed=5)
    model.load_weights(root / "step18.weights.h5")
    assert tfckpt.restore(reference, str(run_dir), 18).epoch == 3
    for a, b in zip(model.get_weights(), reference.get_weights()):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize(
    "argv, status, message",
    [
        (["ls", "{root}/not_a_run"], 2, "is not a tfckpt run directory"),
        (["prune", "{run}"], 2, "prune needs at least one rule"),
        (["prune", "{run}", "--keep-last", "-1"], 2, "`keep_last` must be an integer >= 0"),
        (
            ["export", "{run}", "{root}/x.keras", "--model-from", "{root}/model_def.py"],
            2,
            "--model-from must be PATH.keras or PATH.py:FUNCTION",
        ),
        (
            ["export", "{run}", "{root}/x.keras", "--model-from", "{root}/model_def.py:nope"],
            2,
            "has no function 'nope'",
        ),
        (
            [
                "export",
                "{run}",
                "{root}/x.keras",
                "--model-from",
                "{root}/arch.keras",
                "--which",
                "ckpt-000099",
            ],
            1,
            "No checkpoint matches which='ckpt-000099'",
        ),
        (["info", "{run}", "best", "--epoch", "2"], 2, "Pass either `which` or `epoch`"),
        (
            ["export", "{run}", "{root}/x.keras", "--model-from", "{root}/model_def.py:wider"],
            1,
            "does not match the model",
        ),
    ],
)
def test_errors_are_one_line_with_a_status(run_dir, capsys, argv, status, message):
    argv = [a.format(root=run_dir.parent, run=run_dir) for a in argv]
    got, out, err = run_main(capsys, *argv)
    assert got == status and out == ""
    assert err.startswith("tfckpt: ") and err.count("\n") == 1 and message in err, err


def test_bad_arguments_exit_2(capsys):
    with pytest.raises(SystemExit) as exit:
        cli.main(["prune"])
    assert (
        exit.value.code == 2 and "the following arguments are required" in capsys.readouterr().err
    )


def test_info_on_a_run_with_no_committed_checkpoint_yet(tmp_path, capsys):
    run = tmp_path / "starting"
    run.mkdir()
    (run / ".lock").write_text("")  # a run still in its first epoch
    assert cli.main(["info", str(run)]) == 1
    assert "holds no committed checkpoint yet" in capsys.readouterr().err
