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


class SeedLinear(nn.Module):
    """y[s] = x[s] @ W[s].T + b[s] for every seed s; W: [S, out, in], b: [S, out], x: [S, B, in]."""

    def __init__(self, linears):
        super().__init__()
        self.weight = nn.Parameter(torch.stack([m.weight.detach() for m in linears]))
        self.bias = nn.Parameter(torch.stack([m.bias.detach() for m in linears]))

    def forward(self, x):
        return torch.baddbmm(self.bias.unsqueeze(1), x, self.weight.transpose(1, 2))
