"""The Continuum Memory System update rule (Behrouz et al., "Nested Learning", NeurIPS 2025).

The model's parameters are split into levels (slow -> fast); level l has an update period C(l).
Every training step computes a gradient at the current parameters; level l changes only every C(l)
steps, by one optimizer step on the chunk's gradients combined by `accumulate`:

    sum   g = sum of the C(l) gradients of the chunk          (the paper's rule)
    mean  g = that sum / number of gradients in the chunk
    last  g = the chunk's last gradient only                   (what a naive wrapper does)

A level's lr = base_lr * period**a * multiplier, a = 0 / 0.5 / 1 for lr_scale = none / sqrt_period /
period, multiplier = lr_multipliers[l] (default 1). Its optimizer state (Adam moments, step count)
advances only when that level updates. Levels with the same period and multiplier share one update
group: one optimizer instance, one flat buffer, one launch (state is per parameter, or per coordinate,
so nothing changes but the number of launches). A level with period 1 is plain training.
`lr_multipliers` gives the control "every level updated every step, level l at lr / C(l)":
periods [1, 1, 1], lr_multipliers [1/3, 1/2, 1] (levels with equal periods but different multipliers
get separate groups).

Partial chunks at the end of a task: `flush()` is called after the last step of every task. Each
level holding gradients of an unfinished chunk (fewer than C(l) steps) applies them then, combined
by the same rule (mean divides by the number of steps actually accumulated), and its chunk restarts
with the next task. So every gradient is applied exactly once, none crosses a task boundary, and the
accuracy measured after a task reflects all of that task's gradients.

Use it like an optimizer:  scheduler.zero_grad(); loss.backward(); scheduler.step().
Works for any model exposing `levels()` and any torch optimizer; parameters may carry a seed axis.

Flat buffers. Each group's parameters live in ONE flat tensor and their gradients in another: every
parameter becomes a view (`p.data = flat[o:o + n].view_as(p)`, `p.grad = flat_grad[o:o + n].view_as(p)`),
allocated once at construction, zeroed in place, never set to None (autograd accumulates into the
views). Combining and zeroing a chunk's gradients is then one kernel each, and an optimizer that is
elementwise (torch's SGD/Adam family, or one with a class attribute `elementwise = True`) is built on
the flat tensor itself, so fused Adam is one kernel over one tensor. Other optimizers (Muon, M3, deep
momentum: they need each matrix's shape) get the per-parameter views. The arithmetic is unchanged,
element by element (tests/test_cms.py checks bitwise equality against per-tensor optimizers).
Consequences: build the scheduler after the model is on its device (a later `model.to()` would detach
the parameters from the buffers), and never set a parameter's .grad to None (`step()` checks).

On CUDA an elementwise group's flat buffers are stepped in slices (`cuda_slice_size`), by several
optimizers side by side on their own streams (`SideBySide`). Why: torch's fused Adam kernel
(multi_tensor_apply) gives each 65 536-element chunk of a tensor one 512-thread block, so a small
buffer gets few blocks: CMS's fast level at 20 seeds (0.18 M parameters) got 3 for an H100's 132
SMs, the MLP at 10 seeds (2.4 M) 37, and the update took a third of the step (bench/README.md, eighth
session). Each coordinate's arithmetic is the same however the buffer is cut, so the result is too,
bit for bit (tests/test_cms.py).

On CUDA, `capture_graphs()` records each group's full-chunk update (scale, optimizer step, zero the
gradients) as a CUDA graph, replayed at every later update: one launch instead of dozens.
"""
from dataclasses import dataclass, field

import torch

from pmnist.optim.streams import side_by_side

LR_EXPONENT = {"none": 0.0, "sqrt_period": 0.5, "period": 1.0}
CUDA_SLICES = 128         # on CUDA a flat buffer is cut into about this many slices (about one per SM); 0: never
MIN_SLICE = 4096          # elements, at least, per slice
FUSED_CHUNK = 65536       # torch's multi_tensor_apply: one thread block per chunk of this many elements of a tensor
TENSORS_PER_LAUNCH = 36   # ... and at most 36 tensors of Adam's depth per launch
ELEMENTWISE = (torch.optim.SGD, torch.optim.Adam, torch.optim.AdamW, torch.optim.Adamax, torch.optim.NAdam,
               torch.optim.RAdam, torch.optim.RMSprop, torch.optim.Adagrad)


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
    """Levels sharing a period and an lr: always due together, so one optimizer (one launch) serves
    them. The optimizer keeps state per parameter (or per coordinate of the flat buffer), so each
    level's state still advances only on its updates."""
    period: int
    lr: float
    levels: list
    flats: list                    # [(flat parameter, flat gradient)], one pair per (device, dtype)
    views: list                    # [(parameter, its gradient view)] in level order
    optimizer: torch.optim.Optimizer = None
    pending: int = 0               # gradients accumulated in the current chunk
    graph: object = None           # torch.cuda.CUDAGraph of a full-chunk update, once captured
    grad_ptrs: list = field(default_factory=list)

    @property
    def params(self):
        return [p for p, _ in self.views]

    @property
    def flat_grads(self):
        return [g for _, g in self.flats]


def is_elementwise(optimizer):
    return getattr(optimizer, "elementwise", False) or isinstance(optimizer, ELEMENTWISE)


class CMSScheduler:
    def __init__(self, levels, periods, make_optimizer, base_lr, accumulate="sum", lr_scale="none",
                 lr_multipliers=None, flatten=True):
        """levels: [(name, [params])] slow -> fast; periods: one int per level; lr_multipliers: one
        float per level (default all 1.0); make_optimizer(params, lr) -> torch.optim.Optimizer.
        flatten=False keeps per-tensor parameters and gradients (the reference the tests compare with)."""
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
            params = [p for lv in members for p in lv.params]
            group = UpdateGroup(period, base_lr * period ** LR_EXPONENT[lr_scale] * mult, members,
                                *(_flatten(params) if flatten else _separate(params)))
            group.optimizer = make_optimizer(group.params, group.lr)
            if flatten and is_elementwise(group.optimizer):
                slice_size = cuda_slice_size(sum(f.numel() for f, _ in group.flats)) if group.flats[0][0].is_cuda else 0
                group.optimizer = flat_optimizer(make_optimizer, group.flats, group.lr, slice_size)
            group.grad_ptrs = [g.data_ptr() for _, g in group.views]
            self.groups.append(group)
        self.step_count = 0

    def lr(self, level_name):
        return next(g.lr for g in self.groups for lv in g.levels if lv.name == level_name)

    def zero_grad(self):
        """Before backward: `last` keeps only the newest gradient, so drop any pending one."""
        if self.accumulate == "last":
            for group in self.groups:
                _zero(group.flat_grads)

    def step(self):
        """After backward: count this step's gradient; update every level whose chunk is complete."""
        self.step_count += 1
        for group in self.groups:
            self._check_grads(group)
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
            _zero(group.flat_grads)
        for level in self.levels:
            level.updates = 0
            level.updated_last_step = False

    def due_levels(self):
        """Names of the levels that the next step() will update."""
        return [lv.name for g in self.groups if g.pending + 1 == g.period for lv in g.levels]

    def capture_graphs(self):
        """Record every group's full-chunk update as a CUDA graph. Call once each level has updated
        at least once (its optimizer state exists)."""
        pool = torch.cuda.graph_pool_handle()
        for group in self.groups:
            if any(lv.updates == 0 for lv in group.levels):
                raise RuntimeError(f"period-{group.period} levels have not updated yet: capture after their first update")
            group.graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(group.graph, pool=pool):
                self._update(group, group.period)

    def _check_grads(self, group):
        """The gradients must still be the views of the flat buffer (host-side pointer check, no sync)."""
        for (p, _), ptr in zip(group.views, group.grad_ptrs):
            if p.grad is None or p.grad.data_ptr() != ptr:
                raise RuntimeError("a parameter's .grad was replaced or set to None (e.g. by model.zero_grad()): "
                                   "the CMS scheduler owns the gradient buffers; use scheduler.zero_grad()")

    def _apply(self, group):
        if group.graph is not None and group.pending == group.period:
            group.graph.replay()
        else:
            self._update(group, group.pending)
        group.pending = 0
        for level in group.levels:
            level.updates += 1

    def _update(self, group, n_grads):
        if self.accumulate == "mean" and n_grads > 1:
            torch._foreach_div_(group.flat_grads, n_grads)
        group.optimizer.step()
        _zero(group.flat_grads)


class SideBySide:
    """Elementwise optimizers over disjoint slices of flat buffers, stepped side by side (streams.py)."""
    elementwise = True

    def __init__(self, optimizers, device):
        self.optimizers, self.device = optimizers, device

    def step(self):
        side_by_side(lambda optimizer: optimizer.step(), self.optimizers, self.device)


def cuda_slice_size(numel):
    """Elements per slice of a flat buffer of numel elements on CUDA, or 0: leave it whole. About
    CUDA_SLICES slices of at least MIN_SLICE elements (a multiple of 4: 16-byte aligned views), where
    that gives more blocks than the fused kernel's own chunks. Measured on an H100 (bench/README.md,
    eighth session): the MLP's step at 10 seeds 247 -> 227 us with slices of 4096 to 16384, no change
    at 20 seeds (4.9 M), slower at 50 (12 M: 449 -> 478 us with 16384), CMS at 20 seeds 330 -> 271 us."""
    if not CUDA_SLICES:
        return 0
    size = -(-max(MIN_SLICE, -(-numel // CUDA_SLICES)) // 4) * 4
    return size if size < FUSED_CHUNK else 0


def flat_optimizer(make_optimizer, flats, lr, slice_size=0):
    """An elementwise group's optimizer over its flat buffers [(flat, flat gradient)]: one over the whole
    buffers (slice_size 0), else one per TENSORS_PER_LAUNCH slices of at most slice_size elements, each
    slice a view of its flat parameter with the matching view of the flat gradient as its .grad."""
    if not slice_size:
        return make_optimizer([flat for flat, _ in flats], lr)
    slices = []
    for flat, flat_grad in flats:
        for part, grad in zip(flat.split(slice_size), flat_grad.split(slice_size)):
            part.grad = grad
            slices.append(part)
    return SideBySide([make_optimizer(slices[i:i + TENSORS_PER_LAUNCH], lr)
                       for i in range(0, len(slices), TENSORS_PER_LAUNCH)], flats[0][0].device)


def _flatten(params):
    """One flat parameter and one flat gradient per (device, dtype); every parameter and its .grad
    become views into them. Returns (flats, views)."""
    flats, views = [], []
    for device, dtype in dict.fromkeys((p.device, p.dtype) for p in params):
        members = [p for p in params if (p.device, p.dtype) == (device, dtype)]
        flat = torch.cat([p.detach().reshape(-1) for p in members])
        flat_grad = torch.cat([torch.zeros_like(p).reshape(-1) if p.grad is None else p.grad.detach().reshape(-1)
                               for p in members])            # keeps any gradient already accumulated
        flat.grad = flat_grad
        offset = 0
        for p in members:
            n = p.numel()
            p.data = flat[offset:offset + n].view_as(p)
            p.grad = flat_grad[offset:offset + n].view_as(p)
            offset += n
        flats.append((flat, flat_grad))
    views = [(p, p.grad) for p in params]
    return flats, views


def _separate(params):
    """flatten=False: per-tensor gradients, allocated once (zeros) and zeroed in place like the flat ones."""
    for p in params:
        if p.grad is None:
            p.grad = torch.zeros_like(p)
    return [(p, p.grad) for p in params], [(p, p.grad) for p in params]


def _zero(tensors):
    for t in tensors:   # a flat buffer: one fill over all of it (torch._foreach_zero_ gets a block per 65 536)
        t.zero_()
