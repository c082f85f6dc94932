"""Learning rate as a pure function of the step."""

import pytest

from orchestrator.spec.schema import ScheduleSpec
from orchestrator.train.schedule import describe_lr, lr_at, scaled_lr


def test_linear_scaling_rule():
    assert scaled_lr(0.1, 256) == pytest.approx(0.1)
    assert scaled_lr(0.1, 1024) == pytest.approx(0.4)


def test_step_schedule_divides_at_milestones():
    sched = ScheduleSpec(kind="step", milestones=[30, 60], factor=0.1)
    lr = lambda epoch: lr_at(epoch * 100, 100, 0.1, sched, 90)  # noqa: E731
    assert lr(0) == pytest.approx(0.1) and lr(29.99) == pytest.approx(0.1)
    assert lr(30) == pytest.approx(0.01) and lr(60) == pytest.approx(0.001)


def test_warmup_is_linear_then_joins_the_schedule():
    sched = ScheduleSpec(kind="constant", warmup={"kind": "linear", "epochs": 2, "factor": 0.1})
    assert lr_at(0, 10, 1.0, sched, 10) == pytest.approx(0.1)
    assert lr_at(10, 10, 1.0, sched, 10) == pytest.approx(0.55)
    assert lr_at(20, 10, 1.0, sched, 10) == pytest.approx(1.0)
    assert ScheduleSpec(kind="constant", warmup_epochs=2, warmup_start_factor=0.1) == sched  # the older keys


def test_constant_warmup_is_resnet110s():
    """Section 4.2: lr 0.01 for about 400 iterations, then 0.1, then /10 at 32k and 48k iterations
    (epochs 82 and 123 of 391 steps)."""
    sched = ScheduleSpec(kind="step", milestones=[82, 123], warmup={"kind": "constant", "steps": 400, "factor": 0.1})
    lr = lambda step: lr_at(step, 391, 0.1, sched, 164)  # noqa: E731
    assert [lr(0), lr(399)] == [pytest.approx(0.01)] * 2
    assert [lr(400), lr(82 * 391 - 1)] == [pytest.approx(0.1)] * 2
    assert [lr(82 * 391), lr(123 * 391)] == [pytest.approx(0.01), pytest.approx(0.001)]
    assert describe_lr(sched, 0.1, 164, 391) == (
        "lr 0.01 for the first 400 steps (constant warm-up), then lr 0.1, x0.1 at epochs 82 and 123 "
        "(steps 32,062 and 48,093)"
    )


def test_cosine_starts_after_the_warmup():
    sched = ScheduleSpec(kind="cosine", warmup={"kind": "linear", "steps": 10, "factor": 0.5})
    assert lr_at(5, 10, 1.0, sched, 3) == pytest.approx(0.75)
    assert lr_at(10, 10, 1.0, sched, 3) == pytest.approx(1.0)  # the cosine's start, at the warm-up's end
    assert lr_at(20, 10, 1.0, sched, 3) == pytest.approx(0.5)
    assert describe_lr(sched, 1.0, 3) == (
        "rising linearly from lr 0.5 to lr 1 over the first 10 steps (linear warm-up), cosine down to lr 0 at epoch 3"
    )


def test_cosine_goes_from_lr_to_floor():
    sched = ScheduleSpec(kind="cosine", min_lr_factor=0.01)
    assert lr_at(0, 10, 1.0, sched, 5) == pytest.approx(1.0)
    assert lr_at(25, 10, 1.0, sched, 5) == pytest.approx(0.505)
    assert lr_at(50, 10, 1.0, sched, 5) == pytest.approx(0.01)


def test_schedule_is_pure():
    sched = ScheduleSpec(kind="cosine", warmup={"kind": "constant", "epochs": 1})
    assert [lr_at(s, 7, 0.3, sched, 4) for s in range(28)] == [lr_at(s, 7, 0.3, sched, 4) for s in range(28)]
