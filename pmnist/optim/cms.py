"""The Continuum Memory System update rule (Behrouz et al., "Nested Learning", NeurIPS 2025).

The model's parameters are split into levels (slow -> fast); level l has an update period C(l).
Every training step computes a gradient at the current parameters; level l changes only every C(l)
steps, by one optimizer step on the chunk's gradients combined by `accumulate`:

    sum   g = sum of the C(l) gradients of the chunk          (the paper's rule)
    mean  g = that sum / number of gradients in the chunk
    last  g = the chunk's last gradient only                   (what a naive wrapper does)

A level's lr = base_lr * period**a, a = 0 / 0.5 / 1 for lr_scale = none / sqrt_period / period, and
its optimizer state (Adam moments, step count) advances only when that level updates. Levels with the
same period share one optimizer instance (state is per parameter, so nothing changes but the number
of launches). A level with period 1 is plain training.

Partial chunks at the end of a task: `flush()` is called after the last step of every task. Each
level holding gradients of an unfinished chunk (fewer than C(l) steps) applies them then, combined
by the same rule (mean divides by the number of steps actually accumulated), and its chunk restarts
with the next task. So every gradient is applied exactly once, none crosses a task boundary, and the
accuracy measured after a task reflects all of that task's gradients.

Use it like an optimizer:  scheduler.zero_grad(); loss.backward(); scheduler.step().
Works for any model exposing `levels()` and any torch optimizer; parameters may carry a seed axis.

On CUDA, `capture_graphs()` records each group's full-chunk update (scale, optimizer step, zero the
gradients) as a CUDA graph, replayed at every later update: one launch instead of dozens. Gradients
are zeroed in place, never set to None, so their buffers stay where the graphs expect them.
"""
from dataclasses import dataclass, field

import torch

LR_EXPONENT = {"none": 0.0, "sqrt_period": 0.5, "period": 1.0}


@dataclass
class Level:
    name: str
    params: list
    period: int
    updates: int = 0               # optimizer steps taken by this level
    updated_last_step: bool = False


@dataclass
class UpdateGroup:
    """The levels sharing one period: always due together, so one optimizer (one launch) serves them.
    The optimizer keeps state per parameter, so each level's state still advances only on its updates."""
    period: int
    levels: list
    optimizer: torch.optim.Optimizer
    pending: int = 0               # gradients accumulated in the current chunk
    graph: object = None           # torch.cuda.CUDAGraph of a full-chunk update, once captured

    @property
    def params(self):
        return [p for level in self.levels for p in level.params]


class CMSScheduler:
    def __init__(self, levels, periods, make_optimizer, base_lr, accumulate="sum", lr_scale="none"):
        """levels: [(name, [params])] slow -> fast; periods: one int per level;
        make_optimizer(params, lr) -> torch.optim.Optimizer."""
        if len(levels) != len(periods):
            raise ValueError(f"{len(periods)} periods for {len(levels)} levels ({', '.join(n for n, _ in levels)})")
        if accumulate not in ("sum", "mean", "last"):
            raise ValueError(f"accumulate must be sum, mean or last, got {accumulate!r}")
        self.accumulate = accumulate
        self.levels = [Level(name, list(params), int(period)) for (name, params), period in zip(levels, periods)]
        self.groups = []
        for period in sorted({lv.period for lv in self.levels}, reverse=True):
            members = [lv for lv in self.levels if lv.period == period]
            params = [p for lv in members for p in lv.params]
            lr = base_lr * period ** LR_EXPONENT[lr_scale]
            self.groups.append(UpdateGroup(period, members, make_optimizer(params, lr)))
        self.step_count = 0

    def zero_grad(self):
        """Before backward: `last` keeps only the newest gradient, so drop any pending one."""
        if self.accumulate == "last":
            for group in self.groups:
                _zero(group.params)

    def step(self):
        """After backward: count this step's gradient; update every level whose chunk is complete."""
        self.step_count += 1
        for group in self.groups:
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
            _zero(group.params)
        for level in self.levels:
            level.updates = 0
            level.updated_last_step = False

    def due_levels(self):
        """Names of the levels that the next step() will update."""
        return [lv.name for g in self.groups if g.pending + 1 == g.period for lv in g.levels]

    def capture_graphs(self):
        """Record every group's full-chunk update as a CUDA graph. Call once each level has updated
        at least once (its optimizer state exists) and every gradient buffer is allocated."""
        pool = torch.cuda.graph_pool_handle()
        for group in self.groups:
            if any(lv.updates == 0 for lv in group.levels) or any(p.grad is None for p in group.params):
                raise RuntimeError(f"period-{group.period} levels have not updated yet: capture after their first update")
            group.graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(group.graph, pool=pool):
                self._update(group, group.period)

    def _apply(self, group):
        if group.graph is not None and group.pending == group.period:
            group.graph.replay()
        else:
            self._update(group, group.pending)
        group.pending = 0
        for level in group.levels:
            level.updates += 1

    def _update(self, group, n_grads):
        grads = [p.grad for p in group.params if p.grad is not None]
        if self.accumulate == "mean" and n_grads > 1:
            torch._foreach_div_(grads, n_grads)
        group.optimizer.step()
        torch._foreach_zero_(grads)


def _zero(params):
    grads = [p.grad for p in params if p.grad is not None]
    if grads:
        torch._foreach_zero_(grads)
