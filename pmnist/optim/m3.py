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

NS = Newton-Schulz orthogonalisation per seed (newton_schulz.py, ns_steps iterations); "matrices"
are parameters with ndim >= 3 (seed axis + [rows, cols]), "vectors" everything else.
With alpha = 0: matrices move by lr r NS(Adam direction), vectors exactly as Adam(betas=(m1, v1)).

Why the second moment divides *before* NS: the paper writes (O1 + alpha O2) / (sqrt(V) + eps), but
NS mixes coordinates, so a coordinate with a near-zero gradient (an MNIST pixel that is rarely on)
gets an O(1/sqrt(cols)) entry divided by ~|g| ~ 0: on the reference MLP that form diverged at every
lr tried (1e-3 ... 1e-6). Preconditioning first keeps the update's spectral norm ~lr, as in Muon.

CUDA-graph safe: t and k are device tensors advanced in place, and the every-f-steps branch is
branchless (boundary = (t mod f == 0) selects, via torch.where, the new M2, the reset chunk sum and a
freshly computed O2, else keeps the old ones), so a graph captured at any step replays every step
correctly. The cost: the slow branch's Newton-Schulz runs every step, not every f-th.
"""
import torch

from pmnist.optim.muon import step_counter
from pmnist.optim.newton_schulz import is_matrix, orthogonalise


class M3(torch.optim.Optimizer):
    def __init__(self, params, lr, m1=0.9, m2=0.45, v1=0.9, alpha=0.5, frequency=2, ns_steps=5, eps=1e-8):
        if int(frequency) < 1:
            raise ValueError(f"frequency must be >= 1, got {frequency}")
        super().__init__(params, dict(lr=lr, m1=m1, m2=m2, v1=v1, alpha=alpha, frequency=int(frequency),
                                      ns_steps=ns_steps, eps=eps))

    @torch.no_grad()
    def step(self, closure=None):
        for group in self.param_groups:
            m1, m2, v1, f, ns = group["m1"], group["m2"], group["v1"], group["frequency"], group["ns_steps"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                g, s = p.grad, self.state[p]
                if not s:
                    s.update(t=step_counter(g), k=step_counter(g), M1=torch.zeros_like(g), V=torch.zeros_like(g),
                             M2=torch.zeros_like(g), chunk=torch.zeros_like(g), O2=torch.zeros_like(g))
                t, k = s["t"], s["k"]
                orth = (lambda P: orthogonalise(P, ns)) if is_matrix(p) else (lambda P: P)
                t.add_(1)
                s["M1"].lerp_(g, 1 - m1)
                s["V"].mul_(v1).addcmul_(g, g, value=1 - v1)
                s["chunk"].add_(g)
                denom = (s["V"] / (1 - v1 ** t)).sqrt_().add_(group["eps"])
                # the slow branch, branchless: computed every step, kept only where a chunk completes
                boundary = torch.remainder(t, f) == 0                      # t = k f
                k.add_(boundary.to(k.dtype))
                s["M2"].copy_(torch.where(boundary, s["M2"].lerp(s["chunk"], 1 - m2), s["M2"]))
                s["chunk"].masked_fill_(boundary, 0)
                # k = 0 only before the first boundary, where M2 = 0: clamping keeps P2 = 0 (not 0/0)
                p2 = s["M2"] / ((1 - m2 ** k.clamp_min(1)) * f) / denom
                s["O2"].copy_(torch.where(boundary, orth(p2), s["O2"]))
                o1 = orth(s["M1"] / (1 - m1 ** t) / denom)
                r = max(1.0, p.shape[1] / p[0, 0].numel()) ** 0.5 if is_matrix(p) else 1.0
                p.sub_(group["lr"] * r * (o1 + group["alpha"] * s["O2"]))
