"""The Continuum Memory System update rule (Behrouz et al., "Nested Learning", NeurIPS 2025).

The model's parameters are split into levels (slow -> fast); level l has an update period C(l).
Every training step computes a gradient at the current parameters; level l changes only every C(l)
steps, by one optimizer step on the chunk's gradients combined by `accumulate`:

    sum   g = sum of the C(l) gradients of the chunk          (the paper's rule)
    mean  g = that sum / number of gradients in the chunk
    last  g = the chunk's last gradient only                   (what a naive wrapper does)

A level's lr = base_lr * period**a * multiplier, a = 0 / 0.5 / 1 for lr_scale = none / sqrt_period /
period, multiplier = lr_multipliers[l] (default 1). Its optimizer state (Adam moments, step count)
advances only when that level updates. A level with period 1 is plain training.
`lr_multipliers` gives the control "every level updated every step, level l at lr / C(l)":
periods [1, 1, 1], lr_multipliers [1/3, 1/2, 1].

Partial chunks at the end of a task: `flush()` is called after the last step of every task. Each
level holding gradients of an unfinished chunk (fewer than C(l) steps) applies them then, combined
by the same rule (mean divides by the number of steps actually accumulated), and its chunk restarts
with the next task. So every gradient is applied exactly once, none crosses a task boundary, and the
accuracy measured after a task reflects all of that task's gradients.

Levels with the same period and multiplier are always due together, so they form one update group
with one optimizer (its state is per parameter, so each level's state still advances only on its
updates). A group's gradients accumulate in buffers allocated once (pmnist/fast/buffers.py: one flat
buffer per group, so combining and zeroing are one kernel each): autograd adds each step's gradient
into them, and the scheduler zeroes them in place; never set a parameter's .grad to None.

Use it like an optimizer:  scheduler.zero_grad(); loss.backward(); scheduler.step().
Works for any model exposing `levels()` and any torch optimizer; parameters may carry a seed axis.
"""
from dataclasses import dataclass
from functools import partial
from typing import Callable

import torch

from pmnist.fast.buffers import GradientBuffers

LR_EXPONENT = {"none": 0.0, "sqrt_period": 0.5, "period": 1.0}


@dataclass
class Level:
    name: str
    params: list
    period: int
    lr_multiplier: float = 1.0
    updates: int = 0               # optimizer steps taken by this level
    updated_last_step: bool = False


@dataclass
class UpdateGroup:
    """Levels sharing a period and an lr multiplier, stepped by one optimizer."""
    period: int
    lr: float
    levels: list
    buffers: GradientBuffers       # buffers.grads: where the chunk's gradients accumulate
    optimizer: torch.optim.Optimizer
    pending: int = 0               # gradients accumulated in the current chunk
    update_full_chunk: Callable = None   # always the same call (fast/graphs.py may replay it from a CUDA graph)

    @property
    def params(self):
        return self.buffers.params


class CMSScheduler:
    def __init__(self, levels, periods, make_optimizer, base_lr, accumulate="sum", lr_scale="none",
                 lr_multipliers=None, flatten=True):
        """levels: [(name, [params])] slow -> fast; periods: one int per level; lr_multipliers: one
        float per level (default all 1.0); make_optimizer(params, lr) -> torch.optim.Optimizer.
        flatten=False keeps per-tensor gradients (the reference the tests compare the flat buffers with)."""
        names = ", ".join(n for n, _ in levels)
        if len(levels) != len(periods):
            raise ValueError(f"{len(periods)} periods for {len(levels)} levels ({names})")
        lr_multipliers = [1.0] * len(levels) if lr_multipliers is None else [float(m) for m in lr_multipliers]
        if len(lr_multipliers) != len(levels):
            raise ValueError(f"{len(lr_multipliers)} lr_multipliers for {len(levels)} levels ({names})")
        if any(not m > 0 for m in lr_multipliers):
            raise ValueError(f"lr_multipliers must be > 0, got {lr_multipliers}")
        if accumulate not in ("sum", "mean", "last"):
            raise ValueError(f"accumulate must be sum, mean or last, got {accumulate!r}")
        if lr_scale not in LR_EXPONENT:
            raise ValueError(f"lr_scale must be one of {', '.join(LR_EXPONENT)}, got {lr_scale!r}")
        self.accumulate = accumulate
        self.levels = [Level(name, [p for p in params if p.requires_grad], int(period), mult)
                       for (name, params), period, mult in zip(levels, periods, lr_multipliers)]
        seen = set()
        for p in (p for lv in self.levels for p in lv.params):
            if id(p) in seen:
                raise ValueError("a parameter appears in two levels (or twice in one)")
            seen.add(id(p))
        self.groups = []
        keys = sorted({(lv.period, lv.lr_multiplier) for lv in self.levels}, key=lambda k: (-k[0], -k[1]))
        for period, mult in keys:
            members = [lv for lv in self.levels if (lv.period, lv.lr_multiplier) == (period, mult)]
            lr = base_lr * period ** LR_EXPONENT[lr_scale] * mult
            buffers = GradientBuffers([p for lv in members for p in lv.params], flatten)
            group = UpdateGroup(period, lr, members, buffers, buffers.optimizer(make_optimizer, lr))
            group.update_full_chunk = partial(self._update, group, period)
            self.groups.append(group)
        self.step_count = 0

    def lr(self, level_name):
        return next(g.lr for g in self.groups for lv in g.levels if lv.name == level_name)

    def zero_grad(self):
        """Before backward: `last` keeps only the newest gradient, so drop any pending one."""
        if self.accumulate == "last":
            for group in self.groups:
                _zero(group.buffers.grads)

    def step(self):
        """After backward: count this step's gradient; update every level whose chunk is complete."""
        self.step_count += 1
        for group in self.groups:
            group.buffers.check()
            group.pending += 1
            due = group.pending == group.period
            for level in group.levels:
                level.updated_last_step = due
            if due:
                self._apply(group)

    def flush(self):
        """Apply every unfinished chunk (end of a task; see the module docstring)."""
        for group in self.groups:
            for level in group.levels:
                level.updated_last_step = group.pending > 0
            if group.pending:
                self._apply(group)

    def reset(self):
        """Zero the step counters and drop pending (unapplied) gradients. Optimizer state is kept."""
        self.step_count = 0
        for group in self.groups:
            group.pending = 0
            _zero(group.buffers.grads)
        for level in self.levels:
            level.updates = 0
            level.updated_last_step = False

    def due_levels(self):
        """Names of the levels that the next step() will update."""
        return [lv.name for g in self.groups if g.pending + 1 == g.period for lv in g.levels]

    def _apply(self, group):
        if group.pending == group.period:
            group.update_full_chunk()
        else:
            self._update(group, group.pending)
        group.pending = 0
        for level in group.levels:
            level.updates += 1

    def _update(self, group, n_grads):
        """One optimizer step on the chunk's n_grads gradients, combined by the rule; then an empty chunk."""
        if self.accumulate == "mean" and n_grads > 1:
            torch._foreach_div_(group.buffers.grads, n_grads)
        group.optimizer.step()
        _zero(group.buffers.grads)


def _zero(tensors):
    for t in tensors:   # a flat buffer: one fill over all of it (torch._foreach_zero_ gets a block per 65 536)
        t.zero_()
