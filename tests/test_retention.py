"""Retention policies: plain Python, no TensorFlow involved."""

import dataclasses
import math

import pytest

from tfckpt import retention as r


@dataclasses.dataclass(frozen=True)
class C:
    step: int
    epoch: int = 0
    batch: int = 0
    time: float = 0.0
    metrics: dict = dataclasses.field(default_factory=dict)


def kept(policy, checkpoints):
    return [c.step for c, why in zip(checkpoints, policy.keep(checkpoints)) if why]


def test_keep_last_keeps_newest_n():
    cs = [C(s) for s in range(5)]
    assert kept(r.KeepLast(2), cs) == [3, 4]
    assert kept(r.KeepLast(10), cs) == [0, 1, 2, 3, 4]
    assert r.KeepLast(2).keep(cs)[-1] == "last 2"
    assert r.KeepLast(3).keep([]) == []


def test_keep_best_by_mode_ties_and_missing_values():
    cs = [
        C(0, metrics={"val_loss": 0.5}),
        C(1, metrics={"val_loss": 0.2}),
        C(2, metrics={}),
        C(3, metrics={"val_loss": float("nan")}),
        C(4, metrics={"val_loss": 0.2}),
        C(5, metrics={"val_loss": 0.9}),
    ]
    assert kept(r.KeepBest(1, "val_loss", "min"), cs) == [1]  # tie -> older
    assert kept(r.KeepBest(2, "val_loss", "min"), cs) == [1, 4]
    assert kept(r.KeepBest(1, "val_loss", "max"), cs) == [5]
    assert kept(r.KeepBest(10, "val_loss"), cs) == [0, 1, 4, 5]
    assert r.KeepBest(1, "val_loss").keep(cs)[1] == "best 1/1 val_loss=0.2"


def test_keep_every_n_epochs_keeps_first_checkpoint_per_bucket():
    # step-level saves: several checkpoints per epoch
    cs = [
        C(s, epoch=e, batch=b)
        for s, (e, b) in enumerate(
            [(0, 5), (1, 0), (1, 5), (2, 0), (2, 5), (3, 0), (4, 0), (4, 5), (5, 3)]
        )
    ]
    assert kept(r.KeepEveryNEpochs(2), cs) == [3, 6]  # epoch 2 and epoch 4 starts
    assert kept(r.KeepEveryNEpochs(1), cs) == [1, 3, 5, 6, 8]


def test_keep_every_n_hours_is_stable_when_older_checkpoints_go():
    hour = 3600.0
    cs = [C(s, time=t * hour) for s, t in enumerate([0.1, 0.5, 1.2, 1.9, 2.05, 3.7])]
    policy = r.KeepEveryNHours(1)
    first = kept(policy, cs)
    assert first == [0, 2, 4, 5]
    survivors = [c for c in cs if c.step in first]
    assert kept(policy, survivors) == first  # decisions do not move
    assert kept(r.KeepEveryNHours(2), cs) == [0, 4]


def test_any_of_is_a_union_with_all_reasons():
    cs = [C(s, epoch=s, metrics={"m": float(10 - s if s != 1 else 0)}) for s in range(6)]
    policy = r.AnyOf(r.KeepLast(1), r.KeepBest(1, "m"), r.KeepEveryNEpochs(3))
    reasons = policy.keep(cs)
    assert kept(policy, cs) == [1, 3, 5]
    assert reasons[1] == "best 1/1 m=0"
    assert reasons[5] == "last 1"
    assert reasons[3] == "every 3 epochs"
    both = r.AnyOf(r.KeepLast(1), r.KeepEveryNEpochs(5)).keep(cs)
    assert both[5] == "last 1, every 5 epochs"
    assert r.AnyOf().keep(cs) == [None] * 6


def test_keep_all():
    assert kept(r.KeepAll(), [C(1), C(2)]) == [1, 2]


def test_user_policy_composes():
    @dataclasses.dataclass(frozen=True)
    class KeepEpochEnds:
        def keep(self, checkpoints):
            return ["epoch end" if c.batch == 0 else None for c in checkpoints]

    cs = [C(0, batch=3), C(1, batch=0), C(2, batch=1)]
    assert isinstance(KeepEpochEnds(), r.RetentionPolicy)
    assert kept(r.AnyOf(KeepEpochEnds(), r.KeepLast(1)), cs) == [1, 2]


def test_any_of_rejects_non_policies_and_bad_verdict_counts():
    with pytest.raises(TypeError, match="retention policies"):
        r.AnyOf(3)

    class Broken:
        def keep(self, checkpoints):
            return []

    with pytest.raises(ValueError, match="returned 0 verdicts for 2"):
        r.AnyOf(Broken()).keep([C(0), C(1)])


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda: r.KeepLast(0), r"`n` must be an integer >= 1. Received: n=0"),
        (lambda: r.KeepLast(1.5), "Received: n=1.5"),
        (lambda: r.KeepBest(0, "m"), "`k` must be an integer >= 1"),
        (lambda: r.KeepBest(1, ""), "`monitor` must be a metric name"),
        (lambda: r.KeepBest(1, "m", "up"), r"`mode` must be one of \('min', 'max'\)"),
        (lambda: r.KeepEveryNEpochs(-1), "Received: n=-1"),
        (lambda: r.KeepEveryNHours(0), "`hours` must be a positive number"),
        (lambda: r.KeepEveryNHours(math.inf), "Received: hours=inf"),
    ],
)
def test_invalid_arguments_say_what_is_allowed(make, message):
    with pytest.raises(ValueError, match=message):
        make()


def test_is_better():
    assert r.is_better(1.0, None, "min")
    assert r.is_better(0.5, 1.0, "min") and not r.is_better(1.0, 1.0, "min")
    assert r.is_better(2.0, 1.0, "max") and not r.is_better(0.5, 1.0, "max")
