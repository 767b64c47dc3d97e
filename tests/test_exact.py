"""Exact resumption: a run SIGKILLed and rerun ends bitwise equal to one never
interrupted (weights, optimizer state, per-epoch metrics, batches trained)."""

import json

import pytest
from support import run_script

import tfckpt


def train(tmp_path, name, *args):
    out = tmp_path / f"{name}-{len(list(tmp_path.glob(name + '-*.json')))}.json"
    proc = run_script("exact.py", tmp_path / name, *args, "--out", out)
    if proc.returncode != 0:
        return proc.returncode, None
    return 0, json.loads(out.read_text())


def killed(tmp_path, name, *args):
    rc, _ = train(tmp_path, name, *args)
    assert rc == -9, f"expected a SIGKILL, got {rc}"


def assert_same_run(tmp_path, name, reference, resumed):
    assert resumed["digest"] == reference["digest"]  # weights + optimizer, bitwise
    assert resumed["seen_min"] == resumed["seen_max"] == 3.0  # no batch twice, none missing
    # Per-epoch metrics across all processes of the run, bitwise.
    history = tfckpt.open(str(tmp_path / name)).history
    for key, values in reference["history"].items():
        assert history[key] == values, key


# tfdata: seeded shuffle with a new order every epoch; tfdata-steps: the same,
# repeated, with steps_per_epoch (fit keeps one iterator across epochs);
# pydataset: Keras batch shuffling plus the dataset's own on_epoch_end order.
DATA = ("arrays", "tfdata", "tfdata-steps", "pydataset")


@pytest.fixture(scope="module")
def references(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("references")
    refs = {}
    for data in DATA:
        rc, refs[data] = train(tmp, f"ref-{data}", "--data", data)
        assert rc == 0 and refs[data]["seen_min"] == refs[data]["seen_max"] == 3.0
    return refs


@pytest.mark.parametrize("data", DATA)
def test_killed_at_an_epoch_boundary(tmp_path, references, data):
    killed(tmp_path, "run", "--data", data, "--kill-at-epoch", 2)
    rc, resumed = train(tmp_path, "run", "--data", data)
    assert rc == 0 and resumed["epochs_run"] == [2]
    assert_same_run(tmp_path, "run", references[data], resumed)


@pytest.mark.parametrize("data", DATA)
def test_killed_in_the_middle_of_an_epoch(tmp_path, references, data):
    # 8 batches per epoch, a checkpoint every 3: killed before step 13, the run
    # resumes after batch 4 of epoch 2 without training batches 1-4 again.
    killed(tmp_path, "run", "--data", data, "--save-freq", 3, "--kill-at-step", 13)
    latest = tfckpt.open(str(tmp_path / "run")).latest
    assert (latest.epoch, latest.batch, latest.step) == (1, 4, 12)
    rc, resumed = train(tmp_path, "run", "--data", data, "--save-freq", 3)
    assert rc == 0 and resumed["epochs_run"] == [1, 2] and resumed["iterations"] == 24
    assert_same_run(tmp_path, "run", references[data], resumed)


def test_killed_in_a_later_callbacks_epoch_end(tmp_path, references):
    # The epoch is durable before tfckpt's on_epoch_end returns: a kill in a
    # callback listed after it (a logger, an upload) loses nothing.
    killed(tmp_path, "run", "--data", "arrays", "--kill-at-epoch-end", 1)
    latest = tfckpt.open(str(tmp_path / "run")).latest
    assert (latest.epoch, latest.batch) == (2, 0)
    rc, resumed = train(tmp_path, "run", "--data", "arrays")
    assert rc == 0 and resumed["epochs_run"] == [2]
    assert_same_run(tmp_path, "run", references["arrays"], resumed)


def test_early_stopping_and_plateau_interrupted_twice(tmp_path):
    args = ("--data", "arrays", "--epochs", 40, "--stoppers")
    rc, reference = train(tmp_path, "ref", *args)
    assert rc == 0
    stopped = len(reference["epochs_run"])
    assert 4 <= stopped < 40, reference["epochs_run"]  # EarlyStopping did stop it
    first, second = max(1, stopped // 3), max(2, 2 * stopped // 3)
    killed(tmp_path, "run", *args, "--kill-at-epoch", first)
    killed(tmp_path, "run", *args, "--kill-at-epoch", second)
    rc, resumed = train(tmp_path, "run", *args)
    assert rc == 0
    assert resumed["epochs_run"][-1] == reference["epochs_run"][-1]  # stops at the same epoch
    assert resumed["lr"] == reference["lr"]  # same plateau decisions
    assert resumed["digest"] == reference["digest"]


def test_data_that_cannot_be_positioned_is_reported_once(tmp_path):
    # A Python generator cannot be rewound: the resume says so (once) and
    # training goes on with everything else restored.
    killed(tmp_path, "run", "--data", "generator", "--save-freq", 3, "--kill-at-step", 13)
    out = tmp_path / "gen.json"
    proc = run_script(
        "exact.py", tmp_path / "run", "--data", "generator", "--save-freq", 3, "--out", out
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr.count("is a Python generator, which cannot be rewound") == 1
    assert json.loads(out.read_text())["iterations"] == 24
