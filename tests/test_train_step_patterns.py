"""Models that override `train_step` (keras.io's GAN, WGAN-GP, distillation,
VAE) and Keras's EMA resume through `fit` bitwise: every variable of the
model and of every optimizer it holds, after a SIGKILL at an epoch boundary
(and, for GAN, WGAN-GP and VAE, one in the middle of an epoch before it, so
the run restarts twice), equals an uninterrupted run's.

Before: the GAN's rerun failed, as tfckpt built the unused optimizer that
`compile()` creates and then found its new slots missing from the checkpoint;
and every checkpoint recorded step 0 (that optimizer's iterations)."""

import json

import pytest
from support import run_script

import tfckpt

STEPS_PER_EPOCH = 8  # 64 samples, batches of 8


def train(tmp_path, pattern, name, *args):
    out = tmp_path / f"{name}-{len(list(tmp_path.glob(name + '-*.json')))}.json"
    proc = run_script("train_step_patterns.py", pattern, tmp_path / name, *args, "--out", out)
    if proc.returncode != 0:
        assert proc.returncode == -9, proc.stderr[-3000:]
        return None
    return json.loads(out.read_text())


def assert_steps_count_training(directory):
    records = tfckpt.open(directory).checkpoints
    steps = [r.step for r in records]
    assert steps == sorted(set(steps)) and steps[0] > 0, steps
    for r in records:
        assert r.step == r.epoch * STEPS_PER_EPOCH + r.batch, r


@pytest.mark.parametrize(
    "pattern, mid_epoch",
    [("gan", True), ("wgan_gp", True), ("vae", True), ("distillation", False), ("ema", False)],
)
def test_a_custom_train_step_resumes_bitwise(tmp_path, pattern, mid_epoch):
    reference = train(tmp_path, pattern, "ref")
    assert reference["epochs_run"] == [0, 1, 2]
    args = ()
    if mid_epoch:
        # A checkpoint every 3 steps, killed before step 13: the rerun resumes
        # after batch 4 of epoch 1 (and is itself killed as epoch 2 begins).
        args = ("--save-freq", 3)
        assert train(tmp_path, pattern, "run", *args, "--kill-at-step", 13) is None
        latest = tfckpt.open(tmp_path / "run").latest
        assert (latest.epoch, latest.batch, latest.step) == (1, 4, 12)
    assert train(tmp_path, pattern, "run", *args, "--kill-at-epoch", 2) is None
    assert tfckpt.open(tmp_path / "run").latest.epoch == 2
    resumed = train(tmp_path, pattern, "run", *args)
    assert resumed["epochs_run"] == [2]
    assert resumed["digest"] == reference["digest"]
    assert_steps_count_training(tmp_path / "run")
