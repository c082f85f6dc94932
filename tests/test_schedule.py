"""Learning rate as a pure function of the step."""

import pytest

from orchestrator.spec.schema import ScheduleSpec
from orchestrator.train.schedule import lr_at, scaled_lr


def test_linear_scaling_rule():
    assert scaled_lr(0.1, 256) == pytest.approx(0.1)
    assert scaled_lr(0.1, 1024) == pytest.approx(0.4)


def test_step_schedule_divides_at_milestones():
    sched = ScheduleSpec(kind="step", milestones=[30, 60], factor=0.1)
    lr = lambda epoch: lr_at(epoch * 100, 100, 0.1, sched, 90)  # noqa: E731
    assert lr(0) == pytest.approx(0.1) and lr(29.99) == pytest.approx(0.1)
    assert lr(30) == pytest.approx(0.01) and lr(60) == pytest.approx(0.001)


def test_warmup_is_linear_then_joins_the_schedule():
    sched = ScheduleSpec(kind="constant", warmup_epochs=2, warmup_start_factor=0.1)
    assert lr_at(0, 10, 1.0, sched, 10) == pytest.approx(0.1)
    assert lr_at(10, 10, 1.0, sched, 10) == pytest.approx(0.55)
    assert lr_at(20, 10, 1.0, sched, 10) == pytest.approx(1.0)


def test_cosine_goes_from_lr_to_floor():
    sched = ScheduleSpec(kind="cosine", min_lr_factor=0.01)
    assert lr_at(0, 10, 1.0, sched, 5) == pytest.approx(1.0)
    assert lr_at(25, 10, 1.0, sched, 5) == pytest.approx(0.505)
    assert lr_at(50, 10, 1.0, sched, 5) == pytest.approx(0.01)


def test_schedule_is_pure():
    sched = ScheduleSpec(kind="cosine", warmup_epochs=1)
    assert [lr_at(s, 7, 0.3, sched, 4) for s in range(28)] == [lr_at(s, 7, 0.3, sched, 4) for s in range(28)]
