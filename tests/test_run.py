"""The read-only run view: history, best_by, selection by epoch, quiet restores,
export for plain Keras / TF Serving, prune after the fact, HTML and plot."""

import gc
import json
import logging
import os
import shutil
import subprocess
import sys
import warnings
import xml.etree.ElementTree as ET

os.environ.setdefault("MPLBACKEND", "Agg")

import keras
import numpy as np
import pytest
import tensorflow as tf
from support import architecture, fit, make_data, make_model

import tfckpt
from tfckpt.browse.export import write_atomically


def plain_tf_weights(path):
    """The model weights of a checkpoint, read by plain TensorFlow."""
    model = architecture()
    tf.train.Checkpoint(model=model).read(path).expect_partial()
    return model.get_weights()


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """6 epochs with a restart after epoch 3 (a fresh model resumes from the
    directory), saving every 4 batches and at epoch ends, keeping everything.
    6 batches per epoch: checkpoints at (epoch, batch) (0,4) (1,0) (1,2) (2,0)
    (2,4) (3,0), then (3,2) (4,0) (4,4) (5,0) (5,2) (6,0)."""
    d = tmp_path_factory.mktemp("run") / "exp"
    histories = []
    for epochs in (3, 6):
        _, history = fit(
            make_model(), d, epochs, make_data(), monitor="val_loss", keep_last=None, save_freq=4
        )
        histories.append(history.history)
    return d, histories


def copy_of(trained, tmp_path):
    d = tmp_path / "exp"
    shutil.copytree(trained[0], d)
    return d


def test_history_spans_the_restart(trained):
    d, (first, second) = trained
    run = tfckpt.open(d)  # os.PathLike works too
    history = run.history
    assert history["epoch"] == [1, 2, 3, 4, 5, 6]
    for metric in ("loss", "accuracy", "val_loss", "val_accuracy"):
        assert history[metric] == first[metric] + second[metric]
    assert [(r.epoch, r.batch) for r in run.checkpoints] == [
        (0, 4),
        (1, 0),
        (1, 2),
        (2, 0),
        (2, 4),
        (3, 0),
        (3, 2),
        (4, 0),
        (4, 4),
        (5, 0),
        (5, 2),
        (6, 0),
    ]


def test_best_by_any_metric(trained, tmp_path):
    run = tfckpt.open(trained[0])
    records = run.checkpoints
    assert run.best_by("val_loss") == run.best  # the run's own monitor and mode
    assert "best 1/1 val_loss" in run.best.kept  # the one retention keeps as the best
    val_acc = [r.metrics.get("val_accuracy") for r in records]
    best_acc = max(v for v in val_acc if v is not None)
    oldest = val_acc.index(best_acc)  # ties: the oldest, as retention ranks them
    assert run.best_by("val_accuracy") == records[oldest]  # "auto": accuracy is maximized
    assert run.best_by("val_accuracy", mode="min").metrics["val_accuracy"] == min(
        v for v in val_acc if v is not None
    )
    # Mid-epoch checkpoints hold the batch logs: "loss" ranks all 12.
    assert run.best_by("loss", mode="max").metrics["loss"] == max(
        r.metrics["loss"] for r in records
    )

    with pytest.raises(
        tfckpt.CheckpointNotFoundError,
        match=r"'val_acc'.*Metrics recorded: accuracy, loss, val_accuracy, val_loss\.",
    ):
        run.best_by("val_acc")
    with pytest.raises(
        ValueError, match=r"`mode` must be one of \('auto', 'min', 'max'\)\. Received: mode='up'"
    ):
        run.best_by("val_loss", mode="up")

    # A metric whose direction Keras does not know needs an explicit mode.
    with tfckpt.CheckpointManager(str(tmp_path / "m"), make_model()) as manager:
        for score in (0.2, 0.9, 0.5):
            manager.save(epoch=1, metrics={"score": score})
    other = tfckpt.open(tmp_path / "m")
    with pytest.raises(ValueError, match="whether 'score' should be minimized or maximized"):
        other.best_by("score")
    assert other.best_by("score", mode="max").metrics["score"] == 0.9


def test_select_and_restore_by_epoch(trained):
    run = tfckpt.open(trained[0])
    record = run.select(epoch=4)[0]
    assert (record.epoch, record.batch) == (4, 0)  # the end of epoch 4, not (4, 4)
    assert [(r.epoch, r.batch) for r in run.select(epoch=0)] == [(0, 4)]  # no epoch-0 end: fallback

    model = architecture()
    restored = run.restore(model, epoch=4)
    assert restored == record
    for a, b in zip(model.get_weights(), plain_tf_weights(record.path)):
        np.testing.assert_array_equal(a, b)
    assert tfckpt.restore(architecture(), str(trained[0]), epoch=4) == record

    with pytest.raises(
        tfckpt.CheckpointNotFoundError,
        match=r"epoch=9 .*Available: ckpt-000001 \(step 4\), .*ckpt-000012 \(step 36\); epochs with an epoch-end checkpoint: 1, 2, 3, 4, 5, 6\.",
    ):
        run.restore(architecture(), epoch=9)
    with pytest.raises(ValueError, match="Pass either `which` or `epoch`, not both"):
        run.select("best", epoch=4)
    with pytest.raises(ValueError, match=r"`epoch` must be an integer >= 0\. Received: epoch=-1"):
        run.select(epoch=-1)
    with pytest.raises(tfckpt.CheckpointNotFoundError, match=r"which=7 .*Available"):
        run.select(7)
    assert run.select() == run.select("latest")


class _Collect(logging.Handler):
    def __init__(self):
        super().__init__(logging.DEBUG)
        self.messages = []

    def emit(self, record):
        if record.levelno >= logging.WARNING:
            self.messages.append(f"{record.name}: {record.getMessage()}")


def test_restore_for_inference_is_quiet(trained):
    """No optimizer, no compile: the checkpoint's optimizer values are skipped
    without a Python warning or a TF (absl/python logging) warning, also when
    the model is deleted (where TF reports unrestored values)."""
    run = tfckpt.open(trained[0])
    handler = _Collect()
    loggers = [logging.getLogger(), logging.getLogger("tensorflow"), logging.getLogger("absl")]
    for logger in loggers:
        logger.addHandler(handler)
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            for model in (architecture(), make_model(seed=5)):  # uncompiled, compiled
                record = run.restore(model, "best")
                for a, b in zip(model.get_weights(), plain_tf_weights(record.path)):
                    np.testing.assert_array_equal(a, b)
                del model
                gc.collect()
        assert [str(w.message) for w in caught] == []
        assert handler.messages == []
        # The same capture does see TF's warning for a plain partial restore.
        model = architecture()
        tf.train.Checkpoint(model=model).read(run.best.path)
        del model
        gc.collect()
        assert any("could not be found in the restored object" in m for m in handler.messages)
    finally:
        for logger in loggers:
            logger.removeHandler(handler)


def test_restore_without_optimizer_leaves_a_compiled_optimizer_alone(trained):
    """A warm start with a new learning rate keeps it: the model's own
    optimizer is not restored through the model (Keras models track it)."""
    run = tfckpt.open(trained[0])
    model = make_model(optimizer=keras.optimizers.Adam(0.5), seed=6)
    record = run.restore(model, "best")
    for a, b in zip(model.get_weights(), plain_tf_weights(record.path)):
        np.testing.assert_array_equal(a, b)
    assert float(model.optimizer.learning_rate) == 0.5 and int(model.optimizer.iterations) == 0
    model.optimizer.build(model.trainable_variables)  # no deferred slot values either
    assert all(not np.any(v.numpy()) for v in model.optimizer.variables[2:])

    both = make_model(optimizer=keras.optimizers.Adam(0.5), seed=6)
    run.restore(both, "best", optimizer=both.optimizer)
    assert int(both.optimizer.iterations) == record.step
    assert float(both.optimizer.learning_rate) == pytest.approx(1e-2)  # make_model's


PLAIN_KERAS = r"""
import json, os, sys
os.environ["TF_CPP_MIN_LOG_LEVEL"] = "3"
import numpy as np, keras, tensorflow as tf
d = sys.argv[1]
with np.load(os.path.join(d, "expected.npz")) as f:
    expected = [f[f"arr_{i}"] for i in range(len(f.files))]
x = np.load(os.path.join(d, "x.npy"))
same = lambda arrays: len(arrays) == len(expected) and all(
    a.dtype == b.dtype and np.array_equal(a, b) for a, b in zip(arrays, expected))
model = keras.Sequential([keras.Input((8,)), keras.layers.Dense(16, activation="relu"),
                          keras.layers.Dense(1, activation="sigmoid")])
model.load_weights(os.path.join(d, "best.weights.h5"))
loaded = keras.saving.load_model(os.path.join(d, "best.keras"))
served = tf.saved_model.load(os.path.join(d, "serving"))
print(json.dumps({
    "weights.h5": same(model.get_weights()),
    "keras": same(loaded.get_weights()),
    "saved_model": same([v.numpy() for v in served.variables]),
    "served_predictions": served.serve(x).numpy().tolist(),
    "tfckpt_imported": any(m.split(".")[0] == "tfckpt" for m in sys.modules),
}))
"""


def test_export_is_read_back_bitwise_by_plain_keras(trained, tmp_path):
    run = tfckpt.open(trained[0])
    out = tmp_path / "out"
    assert run.export(make_model(seed=7), out / "best.weights.h5") == run.best
    assert run.export(make_model(seed=8), str(out / "best.keras")) == run.best
    assert run.export(architecture(), out / "serving") == run.best  # no suffix: SavedModel
    assert sorted(os.listdir(out)) == ["best.keras", "best.weights.h5", "serving"]  # no temporaries
    assert (out / "serving" / "saved_model.pb").is_file()

    reference = architecture()
    run.restore(reference, "best")
    np.savez(out / "expected.npz", *reference.get_weights())
    x = make_data(n=16, seed=3)[0]
    np.save(out / "x.npy", x)
    (tmp_path / "plain.py").write_text(PLAIN_KERAS)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    proc = subprocess.run(
        [sys.executable, str(tmp_path / "plain.py"), str(out)],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
    )
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["weights.h5"] and result["keras"] and result["saved_model"]
    assert not result["tfckpt_imported"]
    np.testing.assert_allclose(
        result["served_predictions"], reference.predict(x, verbose=0), rtol=1e-6
    )


def test_tfckpt_export_is_a_function_of_a_run_directory(trained, tmp_path):
    # `tfckpt.export` is the verb, as `tfckpt.restore`; `Run.export` is the same.
    run = tfckpt.open(trained[0])
    path = tmp_path / "best.weights.h5"
    assert tfckpt.export(architecture(), trained[0], path) == run.best
    assert tfckpt.export(architecture(), trained[0], path, epoch=2, overwrite=True).epoch == 2
    model = architecture()
    model.load_weights(path)
    expected = architecture()
    run.restore(expected, epoch=2)
    for a, b in zip(model.get_weights(), expected.get_weights()):
        np.testing.assert_array_equal(a, b)
    for verb in ("export", "restore", "copy", "watch", "verify", "open"):
        assert callable(getattr(tfckpt, verb)), verb


def test_repr_shows_the_checkpoints_the_newest_and_the_best(trained, tmp_path):
    run = tfckpt.open(trained[0])
    first, *rows = repr(run).splitlines()
    best, latest = run.best, run.latest
    assert first.startswith(f"<tfckpt.Run {trained[0]}: 12 checkpoints")
    assert f"newest {latest.name} (step {latest.step}, epoch {latest.epoch})" in first
    assert f"best {best.name} (val_loss={best.metrics['val_loss']:.6g}, min)" in first
    # A long run: a header, its first and last 5 rows.
    assert rows[0].split()[:6] == ["name", "step", "epoch", "batch", "size", "val_loss"]
    names = [r.name for r in run.checkpoints]
    assert [row.split()[0] for row in rows[1:]] == [*names[:5], "...", *names[-5:]]
    assert all(row.split()[5] in ("KiB", "MiB") for row in rows[1:] if row != "...")
    # A short one shows every row; an empty one says so.
    short = tmp_path / "short"
    with tfckpt.CheckpointManager(str(short), make_model(), monitor="val_loss") as manager:
        manager.save(epoch=1, metrics={"val_loss": 0.5})
    assert repr(tfckpt.open(short)).splitlines()[2].startswith("ckpt-000001")
    (tmp_path / "empty").mkdir()
    assert (
        repr(tfckpt.open(tmp_path / "empty")) == f"<tfckpt.Run {tmp_path / 'empty'}: 0 checkpoints>"
    )


def test_export_never_overwrites_unless_asked_and_never_leaves_a_partial_file(trained, tmp_path):
    run = tfckpt.open(trained[0])
    path = tmp_path / "model.weights.h5"
    run.export(architecture(), path)  # the best
    before = path.read_bytes()
    with pytest.raises(FileExistsError, match="already exists. Pass overwrite=True"):
        run.export(architecture(), path, "latest")
    assert path.read_bytes() == before
    assert run.export(architecture(), path, "latest", overwrite=True) == run.latest
    assert path.read_bytes() != before
    # A SavedModel replaces an existing directory too.
    assert run.export(architecture(), tmp_path / "sm", epoch=2).epoch == 2
    run.export(architecture(), tmp_path / "sm", epoch=3, overwrite=True)
    assert sorted(os.listdir(tmp_path)) == ["model.weights.h5", "sm"]

    with pytest.raises(ValueError, match=r"must end with '.keras'.*Received: path='m.h5'"):
        run.export(architecture(), "m.h5")
    with pytest.raises(ValueError, match=r"must be a local path.*Received: path='gs://b/m.keras'"):
        run.export(architecture(), "gs://b/m.keras")
    with pytest.raises(ValueError, match=r"`format` must be None .*Received: format='onnx'"):
        run.export(architecture(), "m", format="onnx")

    # A write that dies halfway leaves neither a file under the final name nor a temporary.
    def dies_halfway(tmp):
        with open(tmp, "wb") as f:
            f.write(b"half")
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        write_atomically(str(tmp_path / "new.keras"), dies_halfway)
    with pytest.raises(KeyboardInterrupt):
        write_atomically(str(path), dies_halfway)  # over an existing file
    assert sorted(os.listdir(tmp_path)) == ["model.weights.h5", "sm"]
    assert path.read_bytes() != b"half"


def test_prune_dry_run_then_for_real(trained, tmp_path):
    d = copy_of(trained, tmp_path)
    (d / ".tmp-ckpt-000099-deadbeef").mkdir()  # an interrupted save: not a checkpoint
    (d / "notes.txt").write_text("mine")
    run = tfckpt.open(d)
    records = run.checkpoints
    best = run.best
    entries = sorted(os.listdir(d))

    report = run.prune(keep_last=2, keep_best=1)
    assert report.dry_run and sorted(os.listdir(d)) == entries  # nothing touched
    kept = {r.name for r in records[-2:]} | {best.name}
    assert [r.name for r in report.kept] == [r.name for r in records if r.name in kept]
    assert [r.name for r in report.deleted] == [r.name for r in records if r.name not in kept]
    assert report.bytes_freed == sum(r.size for r in report.deleted) > 0
    assert (
        "latest" in report.kept[-1].kept
        and "best 1/1 val_loss" in {r.name: r.kept for r in report.kept}[best.name]
    )
    assert f"would delete {len(report.deleted)} of 12 checkpoints" in repr(report)

    done = run.prune(keep_last=2, keep_best=1, dry_run=False)
    assert [r.name for r in done.deleted] == [r.name for r in report.deleted]
    assert not done.dry_run and "deleted" in repr(done)
    assert [r.name for r in run.checkpoints] == [r.name for r in report.kept]
    assert (d / ".tmp-ckpt-000099-deadbeef").is_dir() and (d / "notes.txt").read_text() == "mine"
    assert not any(e.startswith(".trash-") for e in os.listdir(d))
    state = tf.train.get_checkpoint_state(str(d))
    assert list(state.all_model_checkpoint_paths) == [r.path for r in run.checkpoints]
    assert tf.train.latest_checkpoint(str(d)) == records[-1].path
    assert all(problem is None for _, problem in tfckpt.verify(d))
    # Nothing more to delete: the newest is always kept, even by keep_last=0.
    assert run.prune(keep_last=2, keep_best=1, dry_run=False).deleted == []
    assert [r.name for r in run.prune(keep_last=0).kept] == [records[-1].name]


def test_prune_never_deletes_a_damaged_checkpoint(trained, tmp_path):
    d = copy_of(trained, tmp_path)
    run = tfckpt.open(d)
    first = run.checkpoints[0]
    data = d / first.name / "ckpt.data-00000-of-00001"
    raw = bytearray(data.read_bytes())
    raw[len(raw) // 2] ^= 0xFF  # same size: only the checksum tells
    data.write_bytes(bytes(raw))

    dry = run.prune(keep_last=1)
    assert [p.name for p in dry.damaged] == [first.name] and "checksum" in dry.damaged[0].reason
    assert first.name not in [r.name for r in dry.deleted]
    assert not (d / f".damaged-{first.name}").exists()  # a dry run writes nothing

    report = run.prune(keep_last=1, dry_run=False)
    assert len(report.deleted) == 10 and [p.name for p in report.damaged] == [first.name]
    assert (d / first.name).is_dir() and (d / f".damaged-{first.name}").is_file()
    assert [r.name for r in run.checkpoints] == [run.latest.name]
    assert "leave  ckpt-000001  (damaged:" in repr(report)


def test_prune_arguments_and_the_writer_lock(trained, tmp_path):
    d = copy_of(trained, tmp_path)
    run = tfckpt.open(d)
    with pytest.raises(ValueError, match="prune needs at least one rule"):
        run.prune(dry_run=False)
    with pytest.raises(
        ValueError, match=r"`keep_last` must be an integer >= 0 or None\. Received: keep_last=-1"
    ):
        run.prune(keep_last=-1)
    with pytest.raises(
        ValueError,
        match=r"`keep_every_n_hours` must be a positive number or None\. Received: keep_every_n_hours=0",
    ):
        run.prune(keep_every_n_hours=0)
    with pytest.raises(
        TypeError,
        match=r"`retention` must be a tfckpt.retention.RetentionPolicy.*Received: retention='last'",
    ):
        run.prune(retention="last")
    with pytest.raises(
        TypeError, match=r"`dry_run` must be True or False\. Received: dry_run='no'"
    ):
        run.prune(keep_last=1, dry_run="no")
    with tfckpt.CheckpointManager(str(tmp_path / "plain"), make_model()) as manager:
        manager.save(epoch=1)
    with pytest.raises(ValueError, match=r"`keep_best=1` needs a metric .* tracks none"):
        tfckpt.open(tmp_path / "plain").prune(keep_best=1)

    # A custom policy (the union with the keyword rules) is honoured.
    report = run.prune(keep_last=1, retention=tfckpt.retention.KeepEveryNEpochs(3))
    assert [(r.epoch, r.batch) for r in report.kept] == [(3, 0), (6, 0)]

    # A writer in this process (an open manager, a fit) holds the directory:
    with tfckpt.CheckpointManager(str(d), make_model(), monitor="val_loss"):
        with pytest.raises(
            tfckpt.DirectoryLockedError,
            match="Cannot prune while a writer is active.*open for writing in this process",
        ):
            run.prune(keep_last=1, dry_run=False)
        assert len(run.prune(keep_last=1).deleted) == 11  # a dry run needs no lock
    assert len(run.checkpoints) == 12
    assert len(run.prune(keep_last=1, dry_run=False).deleted) == 11  # closed: free again


def test_html_table(trained, tmp_path):
    run = tfckpt.open(trained[0])
    table = ET.fromstring(run._repr_html_())  # well-formed: every text escaped
    headers = [th.text or "" for th in table.iter("th")]
    assert headers == [
        "name",
        "step",
        "epoch",
        "batch",
        "val_loss",
        "accuracy",
        "loss",
        "val_accuracy",
        "size",
        "saved",
        "kept because",
        "",
    ]
    rows = [[td.text or "" for td in tr.iter("td")] for tr in table.find("tbody")]
    assert [row[0] for row in rows] == [r.name for r in run.checkpoints]
    marks = {row[0]: row[-1] for row in rows}
    assert marks[run.best.name].startswith("best") and marks[run.latest.name].endswith("latest")
    assert all(row[8].endswith("KiB") for row in rows)
    assert ET.fromstring(run.checkpoints._repr_html_()).find("tbody") is not None

    # Text from the directory and metric names is escaped.
    odd = tmp_path / "a<b>&c"
    with tfckpt.CheckpointManager(str(odd), make_model(), monitor="<i>", mode="max") as manager:
        manager.save(epoch=1, metrics={"<i>": 1.0})
    table = ET.fromstring(tfckpt.open(odd)._repr_html_())
    assert table.find("caption").text.startswith(str(odd))
    assert "<i>" in [th.text for th in table.iter("th")]


def test_plot_marks_checkpoints_and_best(trained, tmp_path):
    import matplotlib.pyplot as plt

    run = tfckpt.open(trained[0])
    ax = run.plot("val_loss")
    try:
        line = ax.lines[0]
        assert list(line.get_xdata()) == run.history["epoch"]
        assert list(line.get_ydata()) == run.history["val_loss"]
        kept, best = ax.collections
        ends = [r for r in run.checkpoints if r.batch == 0]
        assert kept.get_offsets().tolist() == [[r.epoch, r.metrics["val_loss"]] for r in ends]
        assert best.get_offsets().tolist() == [[run.best.epoch, run.best.metrics["val_loss"]]]
        assert ax.get_xlabel() == "epoch" and ax.get_ylabel() == "val_loss"

        d2 = copy_of(trained, tmp_path)
        assert tfckpt.open(d2).plot("val_loss", ax=ax, label="copy") is ax  # one axes, two runs
        labels = [t.get_text() for t in ax.get_legend().get_texts()]
        assert labels[0] == "exp" and "copy" in labels and "copy: best by val_loss" in labels
    finally:
        plt.close(ax.figure)
    with pytest.raises(
        ValueError,
        match=r"No epoch .* logged 'val_los'\. Logged metrics: accuracy, loss, val_accuracy, val_loss\.",
    ):
        run.plot("val_los")


def test_plot_without_matplotlib_says_how_to_install_it(trained, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    monkeypatch.setitem(sys.modules, "matplotlib.ticker", None)
    with pytest.raises(ImportError, match=r'pip install "tfckpt\[plot\]"'):
        tfckpt.open(trained[0]).plot("val_loss")
