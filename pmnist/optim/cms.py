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

On CUDA, `capture_graphs()` records each level's full-chunk update (scale, optimizer step, zero the
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
    optimizer: torch.optim.Optimizer
    pending: int = 0     # gradients accumulated in the current chunk
    updates: int = 0     # optimizer steps taken by this level
    updated_last_step: bool = field(default=False)
    graph: object = None  # torch.cuda.CUDAGraph of a full-chunk update, once captured


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
                _zero(level.params)

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
            _zero(level.params)

    def due_levels(self):
        """Names of the levels that the next step() will update."""
        return [lv.name for lv in self.levels if lv.pending + 1 == lv.period]

    def capture_graphs(self):
        """Record every level's full-chunk update as a CUDA graph. Call once each level has updated
        at least once (its optimizer state exists) and every gradient buffer is allocated."""
        pool = torch.cuda.graph_pool_handle()
        for level in self.levels:
            if level.updates == 0 or any(p.grad is None for p in level.params):
                raise RuntimeError(f"level {level.name} has not updated yet: capture after its first update")
            level.graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(level.graph, pool=pool):
                self._update(level, level.period)

    def _apply(self, level):
        if level.graph is not None and level.pending == level.period:
            level.graph.replay()
        else:
            self._update(level, level.pending)
        level.pending = 0
        level.updates += 1

    def _update(self, level, n_grads):
        grads = [p.grad for p in level.params if p.grad is not None]
        if self.accumulate == "mean" and n_grads > 1:
            torch._foreach_div_(grads, n_grads)
        level.optimizer.step()
        torch._foreach_zero_(grads)


def _zero(params):
    grads = [p.grad for p in params if p.grad is not None]
    if grads:
        torch._foreach_zero_(grads)
