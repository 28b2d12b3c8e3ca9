"""Pruning schedules: how much of the final target is pruned at a given optimizer step.

Pure functions of the step, so they are tested without a Trainer. ``begin``/``end`` are optimizer steps
(``int``) or fractions of training (``float`` in [0, 1]). After ``end`` the structure is frozen and training
continues as plain fine-tuning (the recovery stretch).

- ``one_shot``: everything at ``begin`` (PruningCallback defers it to the first step with statistics when the
  criterion accumulates them and ``begin`` is 0);
- ``linear``: proportional to progress;
- ``cubic``: ``1 - (1 - t)^3`` (Zhu & Gupta 2017): fast early, gentle near the end;
- ``exponential``: the *kept* fraction decays geometrically, ``kept(t) = (1 - target)^t``;
- ``iterative``: equal increments every ``every`` steps (prune, fine-tune, prune...).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

SCHEDULES = ("one_shot", "linear", "cubic", "exponential", "iterative")


@dataclass(frozen=True)
class Schedule:
    """A pruning schedule between ``begin`` and ``end``; see the module docstring."""

    kind: str = "cubic"
    begin: int | float = 0.0
    end: int | float = 0.7
    every: int = 10  # steps between mask updates (and between increments of ``iterative``)

    def __post_init__(self) -> None:
        if self.kind not in SCHEDULES:
            raise ValueError(f"unknown schedule '{self.kind}'; choose one of {', '.join(SCHEDULES)}.")
        for name in ("begin", "end"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
                raise ValueError(f"schedule {name} must be a step (int >= 0) or a fraction of training, got {value!r}.")
            if isinstance(value, float) and value > 1.0:
                raise ValueError(
                    f"schedule {name}={value} is a float above 1: give a fraction of training in [0, 1], "
                    f"or an int number of steps ({name}={int(value)})."
                )
        if not isinstance(self.every, int) or self.every < 1:
            raise ValueError(f"schedule `every` must be a positive number of steps, got {self.every!r}.")

    @property
    def uses_fractions(self) -> bool:
        return isinstance(self.begin, float) or isinstance(self.end, float)

    def steps(self, max_steps: int | None) -> tuple[int, int]:
        """``(begin, end)`` in optimizer steps, checked against the length of training."""
        if self.uses_fractions and (max_steps is None or max_steps <= 0):
            raise ValueError(
                "the schedule is given as fractions of training but the number of training steps is unknown "
                "(an IterableDataset without max_steps?). Set TrainingArguments.max_steps, or give begin/end "
                "as int steps."
            )
        begin = round(self.begin * max_steps) if isinstance(self.begin, float) else self.begin
        end = round(self.end * max_steps) if isinstance(self.end, float) else self.end
        if self.kind != "one_shot" and end <= begin:
            raise ValueError(f"schedule end ({end}) must come after begin ({begin}).")
        if (
            max_steps is not None
            and max_steps > 0
            and max(begin, end if self.kind != "one_shot" else begin) > max_steps
        ):
            raise ValueError(
                f"the schedule ends at step {max(begin, end)} but training stops at step {max_steps}: the target "
                "would never be reached. Shorten the schedule (end as a fraction < 1 leaves a fine-tuning stretch) "
                "or train longer."
            )
        return begin, end

    def progress(self, step: int, max_steps: int | None, target: float = 0.0) -> float:
        """Fraction of the final target that is pruned at ``step`` (0 before ``begin``, 1 from ``end`` on)."""
        begin, end = self.steps(max_steps)
        if step < begin:
            return 0.0
        if self.kind == "one_shot" or step >= end:
            return 1.0
        t = (step - begin) / (end - begin)
        if self.kind == "linear":
            return t
        if self.kind == "cubic":
            return 1.0 - (1.0 - t) ** 3
        if self.kind == "exponential":
            if target <= 0.0:
                return t
            return (1.0 - (1.0 - target) ** t) / target
        # iterative: increments at begin, begin + every, ... reaching 1 at the last increment before end.
        increments = max(1, math.ceil((end - begin) / self.every))
        return min(1.0, ((step - begin) // self.every + 1) / increments)

    def fraction(self, step: int, max_steps: int | None, target: float) -> float:
        """The fraction to prune at ``step`` for a final ``target`` fraction."""
        return target * self.progress(step, max_steps, target)

    def is_update_step(self, step: int, max_steps: int | None) -> bool:
        """Whether masks are recomputed after ``step`` (every ``every`` steps within the schedule, and at its end)."""
        begin, end = self.steps(max_steps)
        if step < begin:
            return False
        if self.kind == "one_shot":
            return step == begin
        if step > end:
            return False
        return step == end or (step - begin) % self.every == 0
