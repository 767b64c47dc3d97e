"""Training phases: a script of two fits (a frozen base, then unfrozen with a
new optimizer), in one directory or forked with `init_from`. Epochs count per
fit in both routes, and a rerun after a SIGKILL in either phase replays the
script: a fit that had completed trains nothing, the interrupted one
continues, and the run ends bitwise equal to one never interrupted.

Before: the rerun's phase 1 restored phase 2's checkpoint and failed with
"Received incompatible tensor with shape ...", blaming the architecture; a
fork took phase 1's optimizer into phase 2's and failed on the unfrozen
variables; the two routes trained 4 and 2 epochs for the same `fit(epochs=4)`."""

import json

import pytest
from support import run_script

import tfckpt


def run(tmp_path, route, *args):
    out = tmp_path / f"out-{len(list(tmp_path.glob('out-*')))}.json"
    proc = run_script("two_phases.py", tmp_path / "run", route, "--out", out, *args)
    if proc.returncode != 0:
        assert proc.returncode == -9, proc.stderr[-3000:]
        return None
    return json.loads(out.read_text()), proc.stdout


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    result, _ = run(tmp_path_factory.mktemp("reference"), "same")
    assert result["phase1"] == [0, 1] and result["phase2"] == [0, 1, 2, 3]
    return result


@pytest.mark.parametrize(
    "route, kill_at",
    [("same", 4), ("init_from", 4), ("same", 1)],
    ids=["same-dir-killed-in-phase-2", "init-from-killed-in-phase-2", "killed-in-phase-1"],
)
def test_a_two_phase_script_rerun_ends_as_if_never_killed(tmp_path, reference, route, kill_at):
    assert run(tmp_path, route, "--kill-at-run-epoch", kill_at) is None
    result, out = run(tmp_path, route)
    assert result["digest"] == reference["digest"]
    if kill_at >= 2:  # phase 1 had completed: it trains nothing; phase 2 carries on
        assert result["phase1"] == [] and result["phase2"] == [2, 3]
        if route == "same":
            assert "fit 1 of the script) had completed epochs 1-2" in out
        else:  # phase 1's own directory: its run is complete
            assert "2 of 2 epochs already done" in out
    else:
        assert result["phase1"] == [1] and result["phase2"] == [0, 1, 2, 3]
    directory = tmp_path / ("run" if route == "same" else "run-phase2")
    records = tfckpt.open(directory).checkpoints
    assert records[-1].epoch == 6
    steps = [r.step for r in records]
    assert steps == sorted(set(steps))  # a new optimizer never restarts the count


def test_both_routes_train_the_same_epochs(tmp_path, reference):
    result, out = run(tmp_path, "init_from")
    assert result == reference
    assert "was saved in another training phase (the trainable variables changed" in out
