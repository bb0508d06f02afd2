"""The design note's hybrid ("Nested Learning in DHC-SSM"): a spatial encoder for 3-channel images, then
the nested state-space model, then a classifier; batched over seeds.

Input x [S, B, D]: each square image flattened in (row, column, channel) order, D = side * side * C with
C = 3 if D / 3 is a square, else C = 1 (the sequence pipeline's harmonised 32x32 images: 3072 = 32x32x3,
or 1024 = 32x32x1 for the grey alternative, pmnist/datasets.py; 784 = 28x28x1 also fits).
Per seed:

    encoder   per block: Conv2d(3x3, padding 1) -> ReLU -> MaxPool(2)      channels: `channels`
              (two blocks: 32x32xC -> 16x16x32 -> 8x8x64)
    sequence  the feature map read in raster order, one step per position: L = (side / 2^blocks)^2
              steps (64) of F = channels[-1] features
    nested    pmnist.models.nested_ssm.NestedSSM on that sequence (in_dim L * F, sequence_length L):
              its SSM, max-over-time readout, the three memory MLPs (slow, medium, fast) and the head
              (the classifier, 10 outputs per head)

CMS levels, slow -> fast: ["slow", "medium", "fast", "core"], the NestedSSM's, with the encoder in
"core". The note's nested SSM updates its memory levels every 100 / 10 / 1 steps: periods
[100, 10, 1, 1]; the note's "standard SSM" is the same model with every level every step:
periods [1, 1, 1, 1] (sequence/params.yaml).

Seeds: every parameter has the leading seed axis (weights [S, C_out, C_in, 3, 3], biases [S, C_out]); each
seed's convolutions are one group of a grouped convolution (groups = S): input [B, S*C, H, W], weight
[S*C_out, C_in, 3, 3], so no seed ever sees another's features. Each seed's
encoder starts as `torch.manual_seed(seed); [nn.Conv2d(...) for each block]` would.
"""
import math

import torch
import torch.nn.functional as F
from torch import nn

from pmnist.models.layers import per_seed_init
from pmnist.models.nested_ssm import NestedSSM


def image_shape(in_dim):
    """(channels, side) of a square image of in_dim values: 3 channels if in_dim / 3 is a square, else 1."""
    for c in (3, 1):
        side = math.isqrt(in_dim // c)
        if in_dim % c == 0 and side * side * c == in_dim:
            return c, side
    raise ValueError(f"HybridSSM: in_dim {in_dim} is not a square image of 1 or 3 channels")


class HybridSSM(nn.Module):
    def __init__(self, seeds, channels=(32, 64), hidden_dim=128, state_dim=64, memory_hidden=128,
                 in_dim=3 * 32 * 32, n_classes=10):
        super().__init__()
        channels = list(channels)
        in_channels, side = image_shape(in_dim)
        out_side = side >> len(channels)
        if out_side < 1 or out_side << len(channels) != side:
            raise ValueError(f"HybridSSM: a {side}x{side} image cannot be halved {len(channels)} times "
                             f"(one max-pool per entry of channels {channels})")
        self.seeds, self.side, self.in_channels = len(seeds), side, in_channels
        dims = [in_channels, *channels]
        convs = per_seed_init(seeds, lambda: [nn.Conv2d(a, b, 3, padding=1) for a, b in zip(dims[:-1], dims[1:])])
        self.weights = nn.ParameterList(nn.Parameter(torch.stack([c[i].weight.detach() for c in convs]))
                                        for i in range(len(channels)))        # [S, out, in, 3, 3]
        self.biases = nn.ParameterList(nn.Parameter(torch.stack([c[i].bias.detach() for c in convs]))
                                       for i in range(len(channels)))         # [S, out]
        self.length = out_side * out_side
        self.ssm = NestedSSM(seeds, hidden_dim=hidden_dim, state_dim=state_dim, sequence_length=self.length,
                             memory_hidden=memory_hidden, in_dim=self.length * channels[-1], n_classes=n_classes)

    def encode(self, x):
        """x [S, B, side*side*C] (HWC) -> [S, B, L*F]: the last block's map, position-major."""
        S, B, _ = x.shape
        h = x.view(S, B, self.side, self.side, self.in_channels).permute(1, 0, 4, 2, 3)   # [B, S, C, H, W]
        h = h.reshape(B, S * self.in_channels, self.side, self.side)
        for w, b in zip(self.weights, self.biases):
            h = F.conv2d(h, w.flatten(0, 1), b.flatten(), padding=1, groups=S)              # [B, S*out, H, W]
            h = F.max_pool2d(F.relu(h), 2)
        features = h.shape[1] // S
        h = h.view(B, S, features, self.length).permute(1, 0, 3, 2)                        # [S, B, L, F]
        return h.reshape(S, B, self.length * features)

    def forward(self, x, return_diagnostics=False):
        return self.ssm(self.encode(x), return_diagnostics=return_diagnostics)

    def levels(self):
        """(name, params) slow -> fast: the NestedSSM's levels, the encoder joining its core."""
        levels = self.ssm.levels()
        name, core = levels[-1]
        return [*levels[:-1], (name, [*self.weights, *self.biases, *core])]

    def attach_scheduler(self, scheduler):
        self.ssm.attach_scheduler(scheduler)

    def get_memory_utilization(self):
        return self.ssm.get_memory_utilization()
