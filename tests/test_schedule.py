"""Schedules are pure functions of the step."""

from __future__ import annotations

import math

import pytest

from hf_prune.schedule import Schedule


@pytest.mark.parametrize(
    ("kind", "step", "expected"),
    [
        ("linear", 0, 0.0),
        ("linear", 50, 0.5),
        ("linear", 100, 1.0),
        ("cubic", 50, 1 - 0.5**3),
        ("cubic", 25, 1 - 0.75**3),
        ("cubic", 150, 1.0),
        ("exponential", 50, (1 - 0.5**0.5) / 0.5),
        ("iterative", 0, 0.25),
        ("iterative", 24, 0.25),
        ("iterative", 25, 0.5),
        ("iterative", 74, 0.75),
        ("iterative", 75, 1.0),
    ],
)
def test_progress_values(kind: str, step: int, expected: float) -> None:
    schedule = Schedule(kind=kind, begin=0, end=100, every=25)
    assert math.isclose(schedule.progress(step, max_steps=200, target=0.5), expected, rel_tol=1e-12)


def test_one_shot_prunes_everything_at_begin() -> None:
    schedule = Schedule(kind="one_shot", begin=10)
    assert schedule.progress(9, 100) == 0.0
    assert schedule.progress(10, 100) == 1.0
    assert schedule.is_update_step(10, 100) and not schedule.is_update_step(11, 100)


def test_fractions_of_training_and_the_fine_tuning_stretch() -> None:
    schedule = Schedule(kind="linear", begin=0.1, end=0.6, every=5)
    assert schedule.steps(200) == (20, 120)
    assert schedule.progress(19, 200) == 0.0
    assert schedule.progress(70, 200) == 0.5
    assert schedule.progress(180, 200) == 1.0  # frozen structure during the last 80 steps
    assert schedule.fraction(70, 200, target=0.4) == pytest.approx(0.2)
    assert [s for s in range(200) if schedule.is_update_step(s, 200)] == list(range(20, 121, 5))


def test_progress_is_monotone() -> None:
    for kind in ("linear", "cubic", "exponential", "iterative"):
        schedule = Schedule(kind=kind, begin=3, end=77, every=7)
        values = [schedule.progress(s, 100, target=0.6) for s in range(100)]
        assert values == sorted(values), kind
        assert values[0] == 0.0 and values[-1] == 1.0


@pytest.mark.parametrize(
    ("kwargs", "max_steps", "message"),
    [
        ({"end": 150}, 100, "training stops at step 100"),
        ({"end": 0.5}, None, "number of training steps is unknown"),
        ({"end": 0.5}, 0, "number of training steps is unknown"),
        ({"begin": 50, "end": 40}, 100, "must come after begin"),
    ],
)
def test_bad_schedules_against_training_length(kwargs: dict, max_steps: int | None, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        Schedule(kind="linear", **kwargs).steps(max_steps)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"kind": "quadratic"}, "unknown schedule 'quadratic'"),
        ({"end": 1.5}, "float above 1"),
        ({"begin": -1}, "must be a step"),
        ({"every": 0}, "positive number of steps"),
    ],
)
def test_bad_schedule_settings(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        Schedule(**kwargs)
