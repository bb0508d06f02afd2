"""M3, Multi-scale Momentum Muon (Behrouz et al., "Nested Learning", Algorithm 1), seed-batched.

Per parameter, step t = 1, 2, ..., gradient g_t, f = frequency, k = number of completed chunks:

    M1_t = m1 M1_{t-1} + (1-m1) g_t                    fast momentum, every step
    V_t  = v1 V_{t-1}  + (1-v1) g_t^2                  second moment, every step
    D_t  = sqrt(V_t / (1 - v1^t)) + eps                Adam's denominator
    every f-th step (t = k f), with the chunk sum S_k = g_{t-f+1} + ... + g_t:
        M2_k = m2 M2_{k-1} + (1-m2) S_k                slow momentum, every f steps
        P2   = M2_k / ((1 - m2^k) f) / D_t             (bias-corrected, per-step scale)
        O2   = NS(P2) (matrices) | P2 (vectors), then held fixed until the next chunk completes
        (O2 = 0 before the first chunk completes)
    P1_t = M1_t / (1 - m1^t) / D_t
    O1_t = NS(P1_t) (matrices) | P1_t (vectors)
    p   <- p - lr * r * (O1_t + alpha O2),   r = max(1, rows/cols)^0.5 for matrices (as Muon), 1 else

NS = Newton-Schulz orthogonalisation per seed (newton_schulz.py, ns_steps iterations, in `ns_dtype`:
bfloat16 by default, float32 for the control); "matrices" are parameters with ndim >= 3 (seed axis +
[rows, cols]), "vectors" everything else. With alpha = 0: matrices move by lr r NS(Adam direction),
vectors exactly as Adam(betas=(m1, v1)); the slow branch is then not computed at all.

Why the second moment divides *before* NS: the paper writes (O1 + alpha O2) / (sqrt(V) + eps), but
NS mixes coordinates, so a coordinate with a near-zero gradient (an MNIST pixel that is rarely on)
gets an O(1/sqrt(cols)) entry divided by ~|g| ~ 0: on the reference MLP that form diverged at every
lr tried (1e-3 ... 1e-6). Preconditioning first keeps the update's spectral norm ~lr, as in Muon.

CUDA-graph safe: t and k are device tensors advanced in place, and the every-f-steps branch is
branchless (boundary = (t mod f == 0) selects, via torch.where, the new M2, the reset chunk sum and a
freshly computed O2, else keeps the old ones), so a graph captured at any step replays every step
correctly. The cost, accepted: the slow branch's Newton-Schulz runs every step, not every f-th. It
is batched with the fast branch's (P1 and P2 of a matrix, and all matrices of one shape, go through
ONE Newton-Schulz call on [2 S, rows, cols]), so it costs one larger batched matmul chain, not a
second chain of launches. Skipping it on non-boundary steps would need one graph per phase of the
f-cycle (the scheduler replays one graph per group) and saves at most (f-1)/(2f) of the NS work.
"""
import torch

from pmnist.optim.muon import shape_scale, step_counter
from pmnist.optim.newton_schulz import DTYPES, is_matrix, orthogonalise_many


class M3(torch.optim.Optimizer):
    def __init__(self, params, lr, m1=0.9, m2=0.45, v1=0.9, alpha=0.5, frequency=2, ns_steps=5,
                 ns_dtype="bfloat16", eps=1e-8):
        if int(frequency) < 1:
            raise ValueError(f"frequency must be >= 1, got {frequency}")
        if ns_dtype not in DTYPES:
            raise ValueError(f"ns_dtype must be one of {', '.join(DTYPES)}, got {ns_dtype!r}")
        super().__init__(params, dict(lr=lr, m1=m1, m2=m2, v1=v1, alpha=alpha, frequency=int(frequency),
                                      ns_steps=ns_steps, ns_dtype=ns_dtype, eps=eps))

    @torch.no_grad()
    def step(self, closure=None):
        for group in self.param_groups:
            m1, m2, v1, f = group["m1"], group["m2"], group["v1"], group["frequency"]
            slow = group["alpha"] != 0                  # a hyperparameter, not a device value
            matrices, directions = [], []              # NS inputs: per matrix P1 (and P2 if slow)
            for p in group["params"]:
                if p.grad is None:
                    continue
                g, s = p.grad, self.state[p]
                if not s:
                    s.update(t=step_counter(g), k=step_counter(g), M1=torch.zeros_like(g), V=torch.zeros_like(g),
                             M2=torch.zeros_like(g), chunk=torch.zeros_like(g), O2=torch.zeros_like(g))
                t, k = s["t"], s["k"]
                t.add_(1)
                s["M1"].lerp_(g, 1 - m1)
                s["V"].mul_(v1).addcmul_(g, g, value=1 - v1)
                denom = (s["V"] / (1 - v1 ** t)).sqrt_().add_(group["eps"])
                p1 = s["M1"] / (1 - m1 ** t) / denom
                boundary = p2 = None
                if slow:
                    # the slow branch, branchless: computed every step, kept only where a chunk completes
                    s["chunk"].add_(g)
                    boundary = torch.remainder(t, f) == 0                      # t = k f
                    k.add_(boundary.to(k.dtype))
                    s["M2"].copy_(torch.where(boundary, s["M2"].lerp(s["chunk"], 1 - m2), s["M2"]))
                    s["chunk"].masked_fill_(boundary, 0)
                    # k = 0 only before the first boundary, where M2 = 0: clamping keeps P2 = 0 (not 0/0)
                    p2 = s["M2"] / ((1 - m2 ** k.clamp_min(1)) * f) / denom
                if is_matrix(p):
                    matrices.append((p, boundary))
                    directions += [p1, p2] if slow else [p1]
                    continue
                if slow:
                    s["O2"].copy_(torch.where(boundary, p2, s["O2"]))
                    p1 = p1.add_(s["O2"], alpha=group["alpha"])
                p.sub_(group["lr"] * p1)
            if not matrices:
                continue
            orthogonal = orthogonalise_many(directions, group["ns_steps"], DTYPES[group["ns_dtype"]])
            per = 2 if slow else 1
            for i, (p, boundary) in enumerate(matrices):
                o1 = orthogonal[per * i]
                if slow:
                    O2 = self.state[p]["O2"]
                    O2.copy_(torch.where(boundary, orthogonal[per * i + 1], O2))
                    o1 = o1.add(O2, alpha=group["alpha"])
                p.sub_(group["lr"] * shape_scale(p) * o1)
