"""Preemption: a SIGTERM during `fit` saves at the next batch boundary and
stops; rerunning the script continues from exactly there."""

import json
import signal
import time

import pytest
from support import run_script, start_script
from test_exact import assert_same_run, train

import tfckpt


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    rc, ref = train(tmp_path_factory.mktemp("reference"), "ref", "--data", "arrays")
    assert rc == 0
    return ref


def test_sigterm_mid_epoch_saves_exits_42_and_resumes_exactly(tmp_path, reference):
    # The signal arrives before step 13 is trained (epoch 1, 8 batches an
    # epoch); with save_freq="epoch" nothing else would save until step 16.
    rc, _ = train(tmp_path, "run", "--data", "arrays", "--term-at-step", 13)
    assert rc == 42
    latest = tfckpt.open(str(tmp_path / "run")).latest
    assert (latest.epoch, latest.batch, latest.step) == (1, 6, 14)
    rc, resumed = train(tmp_path, "run", "--data", "arrays")
    assert rc == 0 and resumed["epochs_run"] == [1, 2] and resumed["iterations"] == 24
    assert_same_run(tmp_path, "run", reference, resumed)


def test_sigterm_with_stop_returns_from_fit(tmp_path, reference):
    rc, stopped = train(
        tmp_path, "run", "--data", "arrays", "--term-at-step", 13, "--stop-on-signal"
    )
    assert rc == 0 and stopped["iterations"] == 14  # fit returned after that batch
    run = tfckpt.open(str(tmp_path / "run"))
    assert (run.latest.epoch, run.latest.batch) == (1, 6)
    assert len(run.history["epoch"]) == 1  # the cut epoch is not logged as done
    rc, resumed = train(tmp_path, "run", "--data", "arrays", "--stop-on-signal")
    assert rc == 0 and resumed["iterations"] == 24
    assert_same_run(tmp_path, "run", reference, resumed)


def test_sigterm_at_an_epoch_end_with_stop_keeps_the_next_epoch_open(tmp_path, reference):
    # The signal arrives after epoch 1's end (during the other callbacks):
    # fit stops after one batch of the next epoch, which is not recorded as done.
    rc, stopped = train(
        tmp_path, "run", "--data", "arrays", "--term-at-epoch-end", 0, "--stop-on-signal"
    )
    assert rc == 0 and stopped["iterations"] == 9
    run = tfckpt.open(str(tmp_path / "run"))
    assert [(c.epoch, c.batch) for c in run.checkpoints] == [(1, 0), (1, 1)]
    rc, resumed = train(tmp_path, "run", "--data", "arrays", "--stop-on-signal")
    assert rc == 0 and resumed["iterations"] == 24
    assert_same_run(tmp_path, "run", reference, resumed)


def test_sigterm_during_the_resume_skip_with_stop(tmp_path, reference):
    # Resuming after batch 4 of epoch 2 skips 4 batches (no training); a signal
    # then stops fit after the first real step, with a checkpoint of it.
    rc, _ = train(tmp_path, "run", "--data", "arrays", "--save-freq", 3, "--kill-at-step", 13)
    assert rc == -9
    rc, stopped = train(
        tmp_path,
        "run",
        "--data",
        "arrays",
        "--save-freq",
        3,
        "--term-at-step",
        12,
        "--stop-on-signal",
    )
    assert rc == 0 and stopped["iterations"] == 13
    assert tfckpt.open(str(tmp_path / "run")).latest.step == 13
    rc, resumed = train(tmp_path, "run", "--data", "arrays", "--save-freq", 3)
    assert rc == 0 and resumed["iterations"] == 24
    assert_same_run(tmp_path, "run", reference, resumed)


def test_sigterm_after_the_last_step_reaches_the_previous_handler(tmp_path):
    # Too late to stop anything (the last epoch's end): fit finishes and saves,
    # then the signal goes to the handler that was there before (the default:
    # the process ends by SIGTERM) instead of being swallowed.
    rc, _ = train(tmp_path, "run", "--data", "arrays", "--term-at-epoch-end", 2)
    assert rc == -signal.SIGTERM
    latest = tfckpt.open(str(tmp_path / "run")).latest
    assert (latest.epoch, latest.batch, latest.step) == (3, 0, 24)


def test_external_sigterm_is_handled_within_a_step(tmp_path):
    out = tmp_path / "out.json"
    proc = start_script(
        "exact.py", tmp_path / "run", "--data", "arrays", "--print-steps", "--out", out
    )
    seen = -1
    for line in proc.stdout:
        if line.startswith("step "):
            seen = int(line.split()[1])
            if seen >= 5:
                break
    sent = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    rc = proc.wait(timeout=60)
    elapsed = time.monotonic() - sent
    assert rc == 42, proc.stderr.read()
    assert elapsed < 30
    latest = tfckpt.open(str(tmp_path / "run")).latest
    # Saved at the end of the step that was running when the signal came: the
    # last one the process began (it printed each step as it began it).
    last = max([seen] + [int(line.split()[1]) for line in proc.stdout if line.startswith("step ")])
    assert latest.step == last + 1 and last >= seen and latest.batch > 0
    assert not out.exists()
    rc = run_script("exact.py", tmp_path / "run", "--data", "arrays", "--out", out).returncode
    assert rc == 0 and json.loads(out.read_text())["iterations"] == 24


def test_invalid_preemption_arguments_are_named():
    with pytest.raises(ValueError, match="preemption_signals.*SIGKILL"):
        tfckpt.CheckpointCallback("unused", preemption_signals=[signal.SIGKILL])
    with pytest.raises(ValueError, match="preemption_signals` must be None or a sequence"):
        tfckpt.CheckpointCallback("unused", preemption_signals=["TERM"])
    with pytest.raises(
        ValueError, match="preemption_exit_code.*Received: preemption_exit_code=300"
    ):
        tfckpt.CheckpointCallback("unused", preemption_exit_code=300)


def test_previous_signal_handlers_are_back_after_fit(tmp_path):
    from support import make_data, make_model

    x, y = make_data(64)
    model = make_model()
    mine = lambda signum, frame: None  # noqa: E731
    before = signal.signal(signal.SIGTERM, mine)
    try:
        cb = tfckpt.CheckpointCallback(tmp_path / "run", monitor=None, verbose=0)
        model.fit(x, y, epochs=1, verbose=0, callbacks=[cb])
        assert signal.getsignal(signal.SIGTERM) is mine
        off = tfckpt.CheckpointCallback(
            tmp_path / "off", monitor=None, verbose=0, preemption_signals=None
        )
        assert off.preemption_signals == ()
    finally:
        signal.signal(signal.SIGTERM, before)
