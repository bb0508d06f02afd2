"""Where a CMS update group's gradients accumulate: one flat buffer, so combining, zeroing and an
elementwise optimizer's step are each one kernel over the whole group.

Each group's parameters live in ONE flat tensor and their gradients in another: every parameter
becomes a view (`p.data = flat[o:o + n].view_as(p)`, `p.grad = flat_grad[o:o + n].view_as(p)`),
allocated once, zeroed in place, never set to None (autograd accumulates into the views). An
optimizer that is elementwise (torch's SGD/Adam family, or one with a class attribute
`elementwise = True`) is built on the flat tensor itself, so fused Adam is one kernel over one tensor;
the others (Muon, M3, deep momentum: they need each matrix's shape) get the per-parameter views.
Each coordinate's arithmetic is unchanged (tests/test_cms.py: bitwise equal to per-tensor optimizers).
Consequences: build the scheduler after the model is on its device (a later `model.to()` would detach
the parameters from the buffers), and never set a parameter's .grad to None (`check` says so).

On CUDA an elementwise group's flat buffer is stepped in slices, by several optimizers side by side
on their own streams. Why: torch's fused Adam (multi_tensor_apply) gives each 65 536-element chunk
of a tensor one 512-thread block, so a small buffer gets few blocks (CMS's fast level at 20 seeds,
0.18 M parameters: 3 blocks for an H100's 132 SMs) and the update took a third of the step. However
the buffer is cut, each coordinate's arithmetic is the same, so the result is too, bit for bit.
"""
import torch

from pmnist.fast.streams import side_by_side

CUDA_SLICES = 128         # on CUDA a flat buffer is cut into about this many slices (about one per SM); 0: never
MIN_SLICE = 4096          # elements, at least, per slice
FUSED_CHUNK = 65536       # torch's multi_tensor_apply: one thread block per chunk of this many elements of a tensor
TENSORS_PER_LAUNCH = 36   # ... and at most 36 tensors of Adam's depth per launch
ELEMENTWISE = (torch.optim.SGD, torch.optim.Adam, torch.optim.AdamW, torch.optim.Adamax, torch.optim.NAdam,
               torch.optim.RAdam, torch.optim.RMSprop, torch.optim.Adagrad)


class GradientBuffers:
    """A group's parameters and the tensors their gradients accumulate in: `grads`, one flat gradient
    per (device, dtype) (flatten=True), or each parameter's own .grad (flatten=False: the per-tensor
    reference the tests compare with). Either way allocated once and zeroed in place."""

    def __init__(self, params, flatten):
        self.params = params
        self.flats = _flatten(params) if flatten else _separate(params)     # [(parameter, its gradient)]
        self.grads = [g for _, g in self.flats]
        self.flat = flatten
        self._grad_ptrs = [p.grad.data_ptr() for p in params]

    def optimizer(self, make_optimizer, lr):
        """make_optimizer(params, lr), or where it is elementwise the same over the flat buffers."""
        optimizer = make_optimizer(self.params, lr)
        if self.flat and is_elementwise(optimizer):
            slice_size = cuda_slice_size(sum(f.numel() for f, _ in self.flats)) if self.flats[0][0].is_cuda else 0
            optimizer = flat_optimizer(make_optimizer, self.flats, lr, slice_size)
        return optimizer

    def check(self):
        """The gradients must still be these buffers (a host-side pointer check, no sync)."""
        for p, ptr in zip(self.params, self._grad_ptrs):
            if p.grad is None or p.grad.data_ptr() != ptr:
                raise RuntimeError("a parameter's .grad was replaced or set to None (e.g. by model.zero_grad()): "
                                   "the CMS scheduler owns the gradient buffers; use scheduler.zero_grad()")


def is_elementwise(optimizer):
    return getattr(optimizer, "elementwise", False) or isinstance(optimizer, ELEMENTWISE)


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
    that gives more blocks than the fused kernel's own chunks. Measured on an H100: the MLP's step at
    10 seeds 247 -> 227 us with slices of 4096 to 16384, no change at 20 seeds (4.9 M), slower at 50
    (12 M: 449 -> 478 us with 16384), CMS at 20 seeds 330 -> 271 us."""
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
    become views into them. Returns [(flat, flat gradient)]."""
    flats = []
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
    return flats


def _separate(params):
    """flatten=False: per-tensor gradients, allocated once (zeros) and zeroed in place like the flat ones."""
    for p in params:
        if p.grad is None:
            p.grad = torch.zeros_like(p)
    return [(p, p.grad) for p in params]
