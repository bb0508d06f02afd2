"""The reference MLP, batched over seeds: 784 -> 256 -> 128 -> 64 -> 10 with ReLU (hidden_dims from
params; the input size in_dim is the protocol's pixels per image: 784, or 1024 with protocol.pad_to 32).

Its CMS levels, slow -> fast, one per hidden layer; the output layer belongs to the fastest level:
  level 1: [784->256, ReLU]   level 2: [256->128, ReLU]   level 3: [128->64, ReLU, 64->10]
"""
import torch
from torch import nn

from pmnist.models.layers import SeedLinear, per_seed_init


class MLP(nn.Module):
    def __init__(self, seeds, hidden_dims, in_dim=784, n_classes=10):
        super().__init__()
        dims = [in_dim, *hidden_dims, n_classes]
        # Seed s starts exactly as `torch.manual_seed(s); nn.Sequential(Linear, ReLU, ...)` would.
        per_seed = per_seed_init(seeds, lambda: [nn.Linear(a, b) for a, b in zip(dims[:-1], dims[1:])])
        self.layers = nn.ModuleList(SeedLinear([net[i] for net in per_seed]) for i in range(len(dims) - 1))

    def forward(self, x):
        for layer in self.layers[:-1]:
            x = torch.relu(layer(x))
        return self.layers[-1](x)

    def levels(self):
        """(name, params) slow -> fast; the output layer joins the last (fastest) level."""
        groups = [list(layer.parameters()) for layer in self.layers[:-1]]
        groups[-1] += list(self.layers[-1].parameters())
        return [(f"layer{i + 1}", g) for i, g in enumerate(groups)]
