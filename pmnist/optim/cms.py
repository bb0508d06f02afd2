"""The Continuum Memory System update rule (Behrouz et al., "Nested Learning", NeurIPS 2025).

The model's parameters are split into levels (slow -> fast); level l has an update period C(l).
Every training step computes a gradient at the current parameters; level l changes only every C(l)
steps, by one optimizer step on the chunk's gradients combined by `accumulate`:

    sum   g = sum of the C(l) gradients of the chunk          (the paper's rule)
    mean  g = that sum / number of gradients in the chunk
    last  g = the chunk's last gradient only                   (what a naive wrapper does)

Each level has its own optimizer with lr = base_lr * period**a, a = 0 / 0.5 / 1 for
lr_scale = none / sqrt_period / period, so its state (Adam moments, step count) advances only when
that level updates. A level with period 1 is plain training.

Partial chunks at the end of a task: `flush()` is called after the last step of every task. Each
level holding gradients of an unfinished chunk (fewer than C(l) steps) applies them then, combined
by the same rule (mean divides by the number of steps actually accumulated), and its chunk restarts
with the next task. So every gradient is applied exactly once, none crosses a task boundary, and the
accuracy measured after a task reflects all of that task's gradients.

Use it like an optimizer:  scheduler.zero_grad(); loss.backward(); scheduler.step().
Works for any model exposing `levels()` and any torch optimizer; parameters may carry a seed axis.
"""
from dataclasses import dataclass, field

import torch

LR_EXPONENT = {"none": 0.0, "sqrt_period": 0.5, "period": 1.0}


@dataclass
class Level:
    name: str
    params: list
    period: int
    optimizer: torch.optim.Optimizer
    pending: int = 0     # gradients accumulated in the current chunk
    updates: int = 0     # optimizer steps taken by this level
    updated_last_step: bool = field(default=False)


class CMSScheduler:
    def __init__(self, levels, periods, make_optimizer, base_lr, accumulate="sum", lr_scale="none"):
        """levels: [(name, [params])] slow -> fast; periods: one int per level;
        make_optimizer(params, lr) -> torch.optim.Optimizer."""
        if len(levels) != len(periods):
            raise ValueError(f"{len(periods)} periods for {len(levels)} levels ({', '.join(n for n, _ in levels)})")
        if accumulate not in ("sum", "mean", "last"):
            raise ValueError(f"accumulate must be sum, mean or last, got {accumulate!r}")
        self.accumulate = accumulate
        self.levels = [
            Level(name, list(params), int(period), make_optimizer(list(params), base_lr * period ** LR_EXPONENT[lr_scale]))
            for (name, params), period in zip(levels, periods)
        ]
        self.step_count = 0

    def zero_grad(self):
        """Before backward: `last` keeps only the newest gradient, so drop any pending one."""
        if self.accumulate == "last":
            for level in self.levels:
                for p in level.params:
                    p.grad = None

    def step(self):
        """After backward: count this step's gradient; update every level whose chunk is complete."""
        self.step_count += 1
        for level in self.levels:
            level.pending += 1
            level.updated_last_step = level.pending == level.period
            if level.updated_last_step:
                self._apply(level)

    def flush(self):
        """Apply every unfinished chunk (end of a task; see the module docstring)."""
        for level in self.levels:
            level.updated_last_step = level.pending > 0
            if level.pending:
                self._apply(level)

    def reset(self):
        """Zero the step counters and drop pending (unapplied) gradients. Optimizer state is kept."""
        self.step_count = 0
        for level in self.levels:
            level.pending = level.updates = 0
            level.updated_last_step = False
            for p in level.params:
                p.grad = None

    def due_levels(self):
        """Names of the levels that the next step() will update."""
        return [lv.name for lv in self.levels if lv.pending + 1 == lv.period]

    def _apply(self, level):
        if self.accumulate == "mean" and level.pending > 1:
            for p in level.params:
                if p.grad is not None:
                    p.grad.div_(level.pending)
        level.optimizer.step()
        for p in level.params:
            p.grad = None
        level.pending = 0
        level.updates += 1
