"""Optimizer variants resume correctly: schedule position, changed learning rate,
EMA weights and the mixed-precision loss scale."""

import keras
import pytest
from support import all_variables, assert_same_variables, fit, make_model

import tfckpt


@pytest.fixture
def mixed_precision():
    keras.mixed_precision.set_dtype_policy("mixed_float16")
    yield
    keras.mixed_precision.set_dtype_policy("float32")


def run_fit(directory, epochs, data, make_optimizer, callbacks=()):
    model = make_model(optimizer=make_optimizer())
    _, history = fit(model, directory, epochs, data, callbacks, keep_last=1)
    return model, history


def schedule():
    return keras.optimizers.Adam(keras.optimizers.schedules.ExponentialDecay(0.05, 3, 0.5))


def ema():
    return keras.optimizers.SGD(0.1, momentum=0.9, use_ema=True, ema_momentum=0.9)


@pytest.mark.parametrize("make_optimizer", [schedule, ema], ids=["lr_schedule", "ema"])
def test_resume_equals_uninterrupted(tmp_path, data, make_optimizer):
    ref, _ = run_fit(tmp_path / "ref", 4, data, make_optimizer)
    run_fit(tmp_path / "run", 2, data, make_optimizer)
    resumed, history = run_fit(tmp_path / "run", 4, data, make_optimizer)
    assert history.epoch == [2, 3]
    assert_same_variables(all_variables(resumed), all_variables(ref))
    if make_optimizer is schedule:
        lr = resumed.optimizer.learning_rate
        assert float(lr) == pytest.approx(0.05 * 0.5 ** (int(resumed.optimizer.iterations) / 3))


def test_mixed_precision_loss_scale_optimizer(tmp_path, data, mixed_precision):
    ref, _ = run_fit(tmp_path / "ref", 4, data, keras.optimizers.Adam)
    assert isinstance(ref.optimizer, keras.optimizers.LossScaleOptimizer)
    run_fit(tmp_path / "run", 2, data, keras.optimizers.Adam)
    resumed, history = run_fit(tmp_path / "run", 4, data, keras.optimizers.Adam)
    assert history.epoch == [2, 3]
    assert_same_variables(all_variables(resumed), all_variables(ref))
    names = {v.name for v in resumed.optimizer.variables}
    assert any("scale" in n for n in names), names  # the dynamic loss scale is among them


def test_reduce_lr_on_plateau_learning_rate_is_restored(tmp_path, data):
    # The plateau callback runs after tfckpt's on_epoch_end; the epoch's
    # checkpoint is committed once every callback is done, so it holds the new rate.
    plateau = keras.callbacks.ReduceLROnPlateau("loss", factor=0.5, patience=0, min_delta=10.0)
    seen = {}
    spy = keras.callbacks.LambdaCallback(
        on_epoch_begin=lambda epoch, logs: seen.setdefault(
            epoch, (float(model.optimizer.learning_rate), int(model.optimizer.iterations))
        )
    )
    model = make_model(optimizer=keras.optimizers.Adam(0.01))
    fit(model, tmp_path, 3, data, [plateau, spy], keep_last=None)
    lr_at_epoch_2, step = seen[2]
    assert lr_at_epoch_2 < 0.01  # reduced at the end of an earlier epoch
    resumed = make_model(optimizer=keras.optimizers.Adam(0.01))
    record = tfckpt.restore(resumed, str(tmp_path), which=step, optimizer=resumed.optimizer)
    assert record.epoch == 2
    assert float(resumed.optimizer.learning_rate) == lr_at_epoch_2
    assert int(resumed.optimizer.iterations) == step
