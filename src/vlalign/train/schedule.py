"""When a run stops and where its learning-rate schedule stands: one rule for every task.

A run lasts ``epochs`` (its steps' worth) or, with a time budget, until ``time_budget_s`` of
training time is spent: the budget replaces epochs, and the schedule runs on the fraction of the
budget spent. ``max_steps`` caps either (tests, demos) without changing the schedule.
"""

from __future__ import annotations

from vlalign.train.optim import cosine_lr

UNBOUNDED_STEPS = 1 << 40  # "until the time budget is spent": more steps than any run takes
BUDGET_RESOLUTION = 100_000  # a time budget's schedule advances in steps of budget / this


class Schedule:
    """Stop step and learning rate of a run, from its epochs or its time budget."""

    def __init__(self, steps_per_epoch: int, epochs: float, time_budget_s: float = 0.0,
                 max_steps: int | None = None) -> None:
        self.total = max(1, int(epochs * steps_per_epoch))  # the schedule's length in steps
        self.budget = time_budget_s
        limit = UNBOUNDED_STEPS if time_budget_s > 0 else self.total
        self.stop = limit if max_steps is None else min(limit, max_steps)

    @property
    def bounded(self) -> bool:
        """True when the stop step is known in advance (for a progress bar's total)."""
        return self.stop != UNBOUNDED_STEPS

    def out_of_time(self, train_s: float) -> bool:
        return self.budget > 0 and train_s >= self.budget

    def lr(self, step: int, train_s: float, base: float, warmup_fraction: float,
           min_fraction: float = 0.0) -> float:
        """Warm-up then cosine, over steps or over the budget's seconds."""
        at, total = step, self.total
        if self.budget > 0:
            at, total = int(train_s / self.budget * BUDGET_RESOLUTION), BUDGET_RESOLUTION
        return cosine_lr(at, total, base, warmup_fraction, min_fraction)
