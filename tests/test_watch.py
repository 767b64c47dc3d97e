"""tfckpt.watch and SidecarEvaluator: a watcher in another process follows a
trainer that is SIGKILLed and restarted, while retention deletes checkpoints
under it; pins, the finished marker and what a watcher must never yield."""

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
import warnings

import numpy as np
import pytest
import tensorflow as tf
from support import make_model, run_script, start_script

import tfckpt
from tfckpt.serve.sidecar import LOG
from tfckpt.store.finished import MARKER
from tfckpt.store.layout import READERS
from tfckpt.store.pins import Pins


def _scalars(log_dir, tag):
    """(step, value) of every scalar `tag` in the event files of `log_dir`."""
    out = []
    for name in sorted(os.listdir(log_dir)):
        if not name.startswith("events.out.tfevents"):
            continue
        for event in tf.compat.v1.train.summary_iterator(os.path.join(log_dir, name)):
            for value in event.summary.value:
                if value.tag == tag:
                    out.append((event.step, float(tf.make_ndarray(value.tensor))))
    return out


def test_watcher_and_sidecar_follow_a_killed_and_restarted_trainer(tmp_path):
    run = tmp_path / "run"  # does not exist yet: both followers start first
    # It holds the first checkpoint it gets until the trainer's retention has
    # deleted it from the run directory, then reads it again through its pin.
    watcher = start_script(
        "watch_read.py", run, tmp_path / "seen.json", "--hold", "0.3", "--hold-first-until-gone"
    )
    sidecar = start_script("sidecar_eval.py", run, tmp_path / "eval", tmp_path / "evals.json")
    try:
        common = [run, "--epochs", "4", "--save-freq", "2", "--keep-last", "2"]
        killed = run_script("train.py", *common, "--kill-at-epoch", "2")
        assert killed.returncode == -signal.SIGKILL, killed.stderr
        assert not (run / MARKER).exists()  # a crash is no end
        resumed = run_script("train.py", *common, check=True)
        assert json.loads(resumed.stdout.splitlines()[-1])["restored"] is not None
        assert (run / MARKER).exists()
        # Both end by themselves once training finished (no timeout given).
        for proc in (watcher, sidecar):
            _, err = proc.communicate(timeout=180)
            assert proc.returncode == 0, err
    finally:
        for proc in (watcher, sidecar):
            if proc.poll() is None:
                proc.kill()
                proc.wait()

    final = tfckpt.open(run).latest
    seen = json.loads((tmp_path / "seen.json").read_text())
    steps = [s["step"] for s in seen]
    assert steps == sorted(set(steps)), steps  # strictly increasing, each once
    assert seen[-1]["name"] == final.name
    # The first one was read again, with no error, after the trainer's
    # retention had deleted it from the run directory.
    assert seen[0]["gone_while_held"], seen
    assert not os.listdir(run / READERS)  # every pin released

    rows = tfckpt.read_evaluations(tmp_path / "eval")
    evals = json.loads((tmp_path / "evals.json").read_text())
    assert [r["step"] for r in rows] == [r["step"] for r in evals]
    assert [r["step"] for r in rows] == sorted({r["step"] for r in rows})
    assert rows[-1]["step"] == final.step
    assert all(set(r["metrics"]) >= {"loss", "accuracy"} for r in rows)
    scalars = _scalars(tmp_path / "eval", "evaluation/loss")
    assert [s for s, _ in scalars] == [r["step"] for r in rows]
    np.testing.assert_allclose([v for _, v in scalars], [r["metrics"]["loss"] for r in rows])
    assert not any(e.endswith("eval") for e in os.listdir(run))  # nothing in the run dir


def test_a_pinned_checkpoint_stays_readable_after_retention_deletes_it(tmp_path, data):
    x, y = data
    model = make_model()
    model.fit(x, y, epochs=1, verbose=0)
    manager = tfckpt.CheckpointManager(tmp_path / "run", model, keep_last=1)
    first = manager.save(epoch=1)
    watcher = tfckpt.watch(tmp_path / "run", timeout=5, poll_interval=0.1)
    record = next(watcher)
    assert record.name == first.name and record.path != first.path
    expected = [w.numpy() for w in model.weights]
    model.fit(x, y, epochs=1, verbose=0)
    manager.save(epoch=2)  # retention (keep_last=1) deletes the first checkpoint
    assert not (tmp_path / "run" / first.name).exists()
    other = make_model(seed=3)
    before = _tree(tmp_path / "run")
    assert tfckpt.Run(tmp_path / "run").checkpoints  # a reader beside it changes nothing
    assert _tree(tmp_path / "run") == before
    tf.train.Checkpoint(model=other).read(record.path).expect_partial()
    for a, b in zip(expected, other.weights):
        np.testing.assert_array_equal(a, b.numpy())
    second = next(watcher)  # the previous pin is released
    assert second.step > record.step
    assert not os.path.exists(os.path.dirname(record.path))
    watcher.close()
    assert not os.listdir(tmp_path / "run" / READERS)
    manager.close()
    assert (tmp_path / "run" / MARKER).exists()


def _tree(directory):
    """Every path under `directory` with its size and modification time."""
    out = {}
    for root, dirs, files in os.walk(directory):
        for name in dirs + files:
            st = os.lstat(os.path.join(root, name))
            out[os.path.relpath(os.path.join(root, name), directory)] = (
                st.st_size,
                st.st_mtime_ns,
            )
    return out


def test_finished_marker_follows_the_writer(tmp_path, data):
    x, y = data
    model = make_model()
    model.fit(x, y, epochs=1, verbose=0)
    run = tmp_path / "run"
    with tfckpt.CheckpointManager(run, model) as manager:
        manager.save(10, epoch=1)
        assert not (run / MARKER).exists()
    assert (run / MARKER).exists()
    with pytest.raises(RuntimeError, match="boom"):
        with tfckpt.CheckpointManager(run, model) as manager:
            assert not (run / MARKER).exists()  # a new writer un-finishes the run
            manager.save(20, epoch=2)
            raise RuntimeError("boom")
    assert not (run / MARKER).exists()  # an error is no end
    manager = tfckpt.CheckpointManager(run, model)
    manager.close()
    assert (run / MARKER).exists()
    tfckpt.CheckpointManager(run, model).close(finished=False)
    assert (run / MARKER).exists()  # nothing saved since it finished: as it was
    # A watcher of an unfinished run without timeout would wait: with a finished
    # one it yields what is there and ends.
    assert [r.epoch for r in tfckpt.watch(run)] == [1, 2]
    assert [r.epoch for r in tfckpt.watch(run, start="latest")] == [2]
    assert [r.epoch for r in tfckpt.watch(run, start=10**9)] == []


def three_saves(tmp_path, data):
    """The run of a trained model with checkpoints at steps 10, 20, 30 (epochs 1-3)."""
    model = make_model()
    model.fit(*data, epochs=1, verbose=0)
    run = tmp_path / "run"
    with tfckpt.CheckpointManager(run, model, keep_last=None) as manager:
        for epoch in (1, 2, 3):
            manager.save(10 * epoch, epoch=epoch)
    return run


def test_watch_never_yields_uncommitted_or_damaged_checkpoints(tmp_path, data):
    run = three_saves(tmp_path, data)
    (run / MARKER).unlink()
    # An interrupted save, a torn checkpoint (file cut short), a damaged one.
    (run / ".tmp-ckpt-000009-abcdef12").mkdir()
    (run / ".tmp-ckpt-000009-abcdef12" / "ckpt.index").write_bytes(b"x")
    index = run / "ckpt-000002" / "ckpt.index"
    index.write_bytes(index.read_bytes()[:-1])
    index = run / "ckpt-000003" / "ckpt.index"
    data_ = bytearray(index.read_bytes())
    data_[10] ^= 0xFF
    index.write_bytes(bytes(data_))
    with pytest.warns(UserWarning, match="ckpt-000003.*checksum"):
        epochs = [r.epoch for r in tfckpt.watch(run, timeout=0.5, poll_interval=0.1)]
    assert epochs == [1]


def test_watch_of_a_missing_directory_ends_at_its_timeout(tmp_path):
    start = time.monotonic()
    assert list(tfckpt.watch(tmp_path / "not-yet", timeout=0.3, poll_interval=0.1)) == []
    assert time.monotonic() - start >= 0.3
    assert not (tmp_path / "not-yet").exists()  # a reader creates nothing


def test_pin_folders_of_dead_readers_are_removed_by_the_next_writer(tmp_path):
    model = make_model()
    run = tmp_path / "run"
    tfckpt.CheckpointManager(run, model).close()
    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"],
        text=True,
        capture_output=True,
        check=True,
    )
    readers = run / READERS
    pidns = os.readlink("/proc/self/ns/pid")
    for name, owner in [
        ("dead", {"pid": int(dead.stdout), "host": os.uname().nodename, "pidns": pidns}),
        ("garbage", "not json {"),
        ("alive", {"pid": os.getpid(), "host": os.uname().nodename, "pidns": pidns}),
        # A dead pid in another pid namespace says nothing: its heartbeat decides.
        ("elsewhere", {"pid": int(dead.stdout), "host": os.uname().nodename, "pidns": "x"}),
    ]:
        (readers / name / "x").mkdir(parents=True)
        text = owner if isinstance(owner, str) else json.dumps(owner)
        (readers / name / "owner.json").write_text(text)
    old = time.time() - 3600
    os.utime(readers / "garbage" / "owner.json", (old, old))

    os.symlink(tmp_path, readers / "link")  # never followed: only the link goes
    tfckpt.CheckpointManager(run, model).close()
    assert sorted(os.listdir(readers)) == ["alive", "elsewhere"]
    assert run.exists()


def test_invalid_arguments_are_named(tmp_path):
    for kwargs, match in [
        ({"timeout": -1}, "timeout"),
        ({"poll_interval": 0}, "poll_interval"),
        ({"start": "first"}, "start.*'all', 'latest', 'new'"),
    ]:
        with pytest.raises(ValueError, match=match):
            tfckpt.watch(tmp_path, **kwargs)
    model = make_model()
    with pytest.raises(ValueError, match="which.*'all', 'best'.*Received: which='worst'"):
        tfckpt.SidecarEvaluator(model, (1, 2), tmp_path, which="worst")
    with pytest.raises(ValueError, match="log_dir.*outside"):
        tfckpt.SidecarEvaluator(model, (1, 2), tmp_path, log_dir=tmp_path / "eval")
    with pytest.raises(ValueError, match="max_evaluations"):
        tfckpt.SidecarEvaluator(model, (1, 2), tmp_path, max_evaluations=0)


def test_sidecar_which_best_max_evaluations_and_restart(tmp_path, data):
    x, y = data
    model = make_model()
    model.fit(x, y, epochs=1, verbose=0)
    run, log_dir = tmp_path / "run", tmp_path / "eval"
    with tfckpt.CheckpointManager(run, model, monitor="val_loss", keep_last=None) as manager:
        for step, value in [(10, 3.0), (20, 2.0), (30, 4.0), (40, 1.0)]:
            manager.save(step, epoch=step // 10, metrics={"val_loss": value})
    evaluator = tfckpt.SidecarEvaluator(
        make_model(seed=4), (x, y), run, which="best", log_dir=log_dir, max_evaluations=2
    )
    assert [r["step"] for r in evaluator.start()] == [10, 20]
    # Restarted: the steps already in its log are skipped.
    assert [r["step"] for r in evaluator.start()] == [40]
    rows = tfckpt.read_evaluations(log_dir)
    assert [r["step"] for r in rows] == [10, 20, 40]
    # The step-40 row is that checkpoint's weights evaluated: the same numbers.
    check = make_model(seed=5)
    tfckpt.restore(check, run, 40)
    loss = check.evaluate(x, y, verbose=0, return_dict=True)["loss"]
    assert rows[-1]["metrics"]["loss"] == pytest.approx(loss, rel=1e-6)
    assert sorted(os.listdir(run)) == sorted(
        [".finished", ".lock", "checkpoint", *(r.name for r in tfckpt.open(run).checkpoints)]
        + ([READERS] if (run / READERS).exists() else [])
    )


def test_cli_evaluate(tmp_path, data, capsys):
    from tfckpt import cli

    x, y = data
    model = make_model()
    model.fit(x, y, epochs=1, verbose=0)
    run = tmp_path / "run"
    with tfckpt.CheckpointManager(run, model, keep_last=None) as manager:
        manager.save(10, epoch=1)
        manager.save(20, epoch=2)
    model.save(tmp_path / "model.keras")
    np.savez(tmp_path / "val.npz", x=x, y=y)
    argv = ["evaluate", str(run), "--model-from", str(tmp_path / "model.keras")]
    argv += ["--data", str(tmp_path / "val.npz"), "--log-dir", str(tmp_path / "eval")]
    assert cli.main(argv) == 0
    out = capsys.readouterr().out.splitlines()
    assert [line.split()[0] for line in out] == ["ckpt-000001", "ckpt-000002"]
    assert [r["step"] for r in tfckpt.read_evaluations(tmp_path / "eval")] == [10, 20]
    assert cli.main([*argv[:4], "--data", str(tmp_path / "missing.npz")]) == 2


def test_pins_are_copies_where_there_are_no_hard_links(data):
    # ram:// has no hard links (nor a writable .readers/): a private copy.
    x, y = data
    model = make_model()
    model.fit(x, y, epochs=1, verbose=0)
    ram = f"ram://watch-copies-{uuid.uuid4().hex}"
    with tfckpt.CheckpointManager(ram, model, keep_last=1, incremental=False) as manager:
        manager.save(10, epoch=1)
        with tfckpt.watch(ram, timeout=0) as records:
            record = next(records)
            assert not record.path.startswith("ram://")
            manager.save(20, epoch=2)  # deletes the one pinned
            other = make_model(seed=3)
            tf.train.Checkpoint(model=other).read(record.path).expect_partial()
            for a, b in zip(model.weights, other.weights):
                np.testing.assert_array_equal(a.numpy(), b.numpy())
        assert not os.path.exists(os.path.dirname(record.path))


def test_a_readers_symlink_is_never_followed(tmp_path, data):
    x, y = data
    model = make_model()
    model.fit(x, y, epochs=1, verbose=0)
    run, elsewhere = tmp_path / "run", tmp_path / "elsewhere"
    (elsewhere / "old").mkdir(parents=True)
    old = time.time() - 7200
    os.utime(elsewhere / "old", (old, old))
    with tfckpt.CheckpointManager(run, model) as manager:
        manager.save(10, epoch=1)
    os.symlink(elsewhere, run / READERS)
    tfckpt.CheckpointManager(run, model).close()  # a writer's cleanup
    with tfckpt.watch(run) as records:
        record = next(records)
        assert not record.path.startswith(str(run))  # copied, not linked there
    assert os.listdir(elsewhere) == ["old"]


def _in_thread(function, limit=120):
    """Runs `function` in a thread; the exceptions it raised. A bound, not a
    measurement: what a regression makes hang fails instead of blocking."""
    errors = []

    def target():
        try:
            function()
        except BaseException as e:
            errors.append(e)

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    thread.join(limit)
    assert not thread.is_alive(), f"{function.__name__} did not end"
    return errors


def test_hostile_reader_folders_never_make_the_writer_or_a_watcher_fail(tmp_path, data):
    x, y = data
    model = make_model()
    model.fit(x, y, epochs=1, verbose=0)
    run = tmp_path / "run"
    with tfckpt.CheckpointManager(run, model) as manager:
        manager.save(10, epoch=1)
    readers = run / READERS
    here = {"host": socket.gethostname(), "pidns": os.readlink("/proc/self/ns/pid")}
    hostile = {
        "huge-pid": json.dumps({**here, "pid": 2**70}),  # os.kill: OverflowError
        "deep": "[" * 100_000,  # json: RecursionError
        "not-utf8": b"\xff\xfe{".decode("latin-1"),
        "pid-as-text": json.dumps({**here, "pid": "1"}),
    }
    for name, text in hostile.items():
        (readers / name).mkdir(parents=True)
        (readers / name / "owner.json").write_text(text, encoding="latin-1")
    (readers / "fifo").mkdir()
    os.mkfifo(readers / "fifo" / "owner.json")  # opening it must not block
    (readers / "elsewhere").mkdir()
    os.symlink("/etc/hostname", readers / "elsewhere" / "owner.json")
    stale = tmp_path / "outside"
    stale.mkdir()
    (stale / "keep").write_text("not the run's")
    os.symlink(stale, readers / "link-to-outside")
    if os.getuid() == 0:  # another user's stale folder: not ours to remove
        (readers / "other-user").mkdir()
        os.chown(readers / "other-user", 12345, 12345)
        old = time.time() - 7200
        os.utime(readers / "other-user", (old, old))

    steps = []

    def write_and_watch():
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # not even a warning
            with tfckpt.CheckpointManager(run, model) as manager:  # the writer's cleanup
                manager.save(20, epoch=2)
            with tfckpt.watch(run, timeout=0) as records:  # a reader's
                steps.extend(r.step for r in records)

    errors = _in_thread(write_and_watch)
    assert errors == [] and steps == [10, 20], errors
    left = set(os.listdir(readers))
    # Fresh folders whose owner says nothing usable: kept until their age decides.
    assert set(hostile) | {"fifo", "elsewhere"} <= left
    assert "link-to-outside" not in left  # the link removed, never followed
    assert os.listdir(stale) == ["keep"]
    if os.getuid() == 0:
        assert "other-user" in left
    # Once their heartbeat is stale, the next writer removes them.
    old = time.time() - 7200
    for name in [*hostile, "fifo", "elsewhere"]:
        os.utime(readers / name / "owner.json", (old, old), follow_symlinks=False)
    tfckpt.CheckpointManager(run, model).close()
    assert set(os.listdir(readers)) <= {"other-user"}
    assert os.path.exists("/etc/hostname")


def test_a_consumer_slower_than_the_timeout_gets_what_was_committed_meanwhile(tmp_path, data):
    x, y = data
    model = make_model()
    model.fit(x, y, epochs=1, verbose=0)
    with tfckpt.CheckpointManager(tmp_path / "run", model, keep_last=None) as manager:
        manager.save(10, epoch=1)
        with tfckpt.watch(tmp_path / "run", timeout=0.2, poll_interval=0.05) as records:
            assert next(records).step == 10
            manager.save(20, epoch=2)  # committed while the consumer works...
            time.sleep(0.5)  # ...longer than the timeout
            assert next(records).step == 20
            assert next(records, None) is None  # nothing more: the timeout ends it


@pytest.mark.parametrize("kind", ["file", "unreadable"])
def test_a_directory_that_cannot_be_listed_ends_at_the_timeout(tmp_path, kind):
    path = tmp_path / "run"
    if kind == "file":
        path.write_text("not a directory")
    else:
        path.mkdir()
        (path / "ckpt-000001").mkdir()
        os.chmod(path, 0)
        if os.access(path, os.R_OK):  # root reads anyway: a file in the way instead
            os.chmod(path, 0o755)
            os.rmdir(path / "ckpt-000001")
            (path / "ckpt-000001").write_text("not a checkpoint")
    out = []
    watcher = tfckpt.watch(path, timeout=0.2, poll_interval=0.05)

    def consume():
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            out.append(list(watcher))

    errors = _in_thread(consume)
    os.chmod(path, 0o755)
    assert errors == [] and out == [[]], errors


def test_an_io_error_while_pinning_is_retried_then_skipped(tmp_path, data):
    run = three_saves(tmp_path, data)
    failures = {"ckpt-000001": 10**9, "ckpt-000002": 1}  # always; once

    class Flaky(Pins):
        def pin(self, record):
            if failures.get(record.name, 0) > 0:
                failures[record.name] -= 1
                if record.name == "ckpt-000001":
                    raise OSError(5, "Input/output error")
                raise tf.errors.UnavailableError(None, None, "storage busy")
            return super().pin(record)

    watcher = tfckpt.watch(run, timeout=5, poll_interval=0.05)
    watcher._pins.close()
    watcher._pins = Flaky(str(run))
    with pytest.warns(UserWarning, match="skipping ckpt-000001.*could not be pinned.*Input/output"):
        steps = [r.step for r in watcher]
    assert steps == [20, 30]
    assert not os.listdir(run / READERS)


def test_a_torn_line_in_the_evaluations_log_does_not_swallow_the_next(tmp_path, data):
    x, y = data
    model = make_model()
    model.fit(x, y, epochs=1, verbose=0)
    run, log_dir = tmp_path / "run", tmp_path / "eval"
    with tfckpt.CheckpointManager(run, model, keep_last=None) as manager:
        manager.save(10, epoch=1)
        manager.save(20, epoch=2)
    evaluator = tfckpt.SidecarEvaluator(
        make_model(seed=4), (x, y), run, log_dir=log_dir, max_evaluations=1
    )
    assert [r["step"] for r in evaluator.start()] == [10]
    with open(log_dir / LOG, "a") as f:
        f.write('{"name": "ckpt-000002", "st')  # a crash in the middle of a line
    assert [r["step"] for r in evaluator.start()] == [20]
    lines = (log_dir / LOG).read_text().splitlines()
    assert lines[1] == '{"name": "ckpt-000002", "st'
    assert json.loads(lines[2])["step"] == 20
    assert [r["step"] for r in tfckpt.read_evaluations(log_dir)] == [10, 20]


@pytest.mark.parametrize("how", ["removed", "a file in its place"])
def test_a_watcher_whose_pin_folder_was_removed_goes_on(tmp_path, data, how):
    x, y = data
    model = make_model()
    model.fit(x, y, epochs=1, verbose=0)
    run = tmp_path / "run"
    steps = []
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with tfckpt.CheckpointManager(run, model, keep_last=None) as manager:
            manager.save(10, epoch=1)
            # The timeout only bounds a failure: the run's end ends it.
            watcher = tfckpt.watch(run, timeout=30, poll_interval=0.05)
            assert next(watcher).step == 10
            shutil.rmtree(run / READERS)  # a user's or a cleanup script's, between saves
            if how != "removed":
                (run / READERS).write_text("not a directory: pins are copies now")
            manager.save(20, epoch=2)
            manager.save(30, epoch=3)
        for record in watcher:
            steps.append(record.step)
            # Linked in a folder made again, or copied where none can be made.
            assert record.path.startswith(str(run / READERS)) == (how == "removed")
    assert steps == [20, 30]
    assert not [str(w.message) for w in caught if "tfckpt" in str(w.message)]
    if how == "removed":
        assert not os.listdir(run / READERS)  # the new folder went with the watcher


def test_a_sidecar_keeps_evaluating_after_its_pin_folder_was_removed(tmp_path, data):
    run = three_saves(tmp_path, data)

    class RemovesPins(tfckpt.SidecarEvaluator):
        def evaluate(self, record):
            row = super().evaluate(record)
            if record.step == 10:
                shutil.rmtree(run / READERS)  # between two evaluations
            return row

    evaluator = RemovesPins(make_model(seed=4), data, run, log_dir=tmp_path / "eval")
    assert [r["step"] for r in evaluator.start()] == [10, 20, 30]


def test_a_branched_runs_checkpoints_at_steps_already_seen_are_yielded(tmp_path, data):
    x, y = data
    model = make_model()
    model.fit(x, y, epochs=1, verbose=0)
    run = tmp_path / "run"
    # The timeout only bounds a failure: each record asked for is there already.
    watcher = tfckpt.watch(run, timeout=10, poll_interval=0.05)
    with tfckpt.CheckpointManager(run, model, keep_last=None) as manager:
        for epoch in (1, 2, 3):
            manager.save(10 * epoch, epoch=epoch)
        assert [next(watcher).name for _ in range(3)] == [
            "ckpt-000001",
            "ckpt-000002",
            "ckpt-000003",
        ]
    # Restarted from step 10 (a branch): steps 20 and 30 again, as new checkpoints.
    with tfckpt.CheckpointManager(run, model, keep_last=None) as manager:
        manager.save(20, epoch=2)
        branch = next(watcher)
        assert (branch.name, branch.step) == ("ckpt-000004", 20)
        # That epoch end saved again with later changes: the same point, not twice.
        manager.save(20, epoch=2, supersede=True)
        manager.save(30, epoch=3)
    assert [(r.name, r.step) for r in watcher] == [("ckpt-000006", 30)]
    assert [r.name for r in tfckpt.watch(run, start=30)] == ["ckpt-000003", "ckpt-000006"]

    # A sidecar evaluates the branch's checkpoints too, and each only once.
    log_dir = tmp_path / "eval"
    evaluator = tfckpt.SidecarEvaluator(make_model(seed=4), (x, y), run, log_dir=log_dir)
    assert [r["name"] for r in evaluator.start()] == [
        "ckpt-000001",
        "ckpt-000002",
        "ckpt-000003",
        "ckpt-000005",
        "ckpt-000006",
    ]
    assert evaluator.start() == []  # restarted: every checkpoint is in its log
    rows = tfckpt.read_evaluations(log_dir)
    assert [(r["step"], r["name"]) for r in rows] == [
        (10, "ckpt-000001"),
        (20, "ckpt-000005"),
        (30, "ckpt-000006"),
    ]
