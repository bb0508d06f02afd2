"""Layers whose parameters carry a leading seed axis: one independent network per seed, one kernel."""
import torch
from torch import nn


def per_seed_init(seeds, build):
    """Call build() once per seed right after torch.manual_seed(seed), without touching the global
    RNG; returns the list of what build() made. Batched models stack these, so seed s starts from
    exactly what `torch.manual_seed(s); build()` gives in a one-seed-at-a-time loop."""
    made = []
    for seed in seeds:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            made.append(build())
    return made


def _transposed(t):
    """t is the transpose of a contiguous tensor (t.mT.is_contiguous()), e.g. h.mT of a [S, N, rows] h."""
    return not t.is_contiguous() and t.mT.is_contiguous()


class _SeedLinearFn(torch.autograd.Function):
    """y = x @ W^T + b per seed, with every gradient returned in its tensor's own layout.

    Why not plain autograd: baddbmm's backward computes W's gradient as (x^T dy)^T, a transposed view,
    and adding a strided tensor into the (flat, contiguous) .grad buffer is a slow non-vectorised
    kernel (4 of them were ~15 % of the MLP's step on an H100). Here dW = dy^T x is computed
    contiguous; dx is contiguous, or the transpose of a contiguous tensor when x is one (the SSM reads
    its [S, N, rows] state as x = h.mT), so its gradient reaches h without a copy. transpose_out=True
    returns y as the transpose of a contiguous [S, out, rows] tensor (the SSM's scan wants that).
    Same products as autograd's: on the CPU the gradients are bitwise equal (tests/test_layers.py)."""

    @staticmethod
    def forward(ctx, x, weight, bias, transpose_out):
        ctx.save_for_backward(x, weight)
        if transpose_out:   # y^T = W x^T + b, computed and stored [S, out, rows]
            return torch.baddbmm(bias.unsqueeze(2), weight, x.mT).mT
        return torch.baddbmm(bias.unsqueeze(1), x, weight.mT)

    @staticmethod
    def backward(ctx, grad):
        x, weight = ctx.saved_tensors
        gx = gw = gb = None
        if ctx.needs_input_grad[0]:
            gx = torch.bmm(weight.mT, grad.mT).mT if _transposed(x) else torch.bmm(grad, weight)
        if ctx.needs_input_grad[1]:
            gw = torch.bmm(grad.mT, x)
        if ctx.needs_input_grad[2]:
            gb = grad.sum(1)
        return gx, gw, gb, None


class SeedLinear(nn.Module):
    """y[s] = x[s] @ W[s].T + b[s] for every seed s; W: [S, out, in], b: [S, out], x: [S, B, in]."""

    def __init__(self, linears):
        super().__init__()
        self.weight = nn.Parameter(torch.stack([m.weight.detach() for m in linears]))
        self.bias = nn.Parameter(torch.stack([m.bias.detach() for m in linears]))

    def forward(self, x, transpose_out=False):
        """transpose_out=True: y is the transpose of a contiguous [S, out, B] tensor (y.mT is free)."""
        return _SeedLinearFn.apply(x, self.weight, self.bias, transpose_out)
