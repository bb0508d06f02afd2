"""M3, Multi-scale Momentum Muon (Behrouz et al., "Nested Learning", Algorithm 1), seed-batched.

Per parameter, step t = 1, 2, ..., gradient g_t, f = frequency, k = number of completed chunks:

    M1_t = m1 M1_{t-1} + (1-m1) g_t                      fast momentum, every step
    V_t  = v1 V_{t-1}  + (1-v1) g_t^2                    second moment, every step
    every f-th step (t = k f), on the chunk sum S_k = g_{t-f+1} + ... + g_t:
        M2_k = m2 M2_{k-1} + (1-m2) S_k                  slow momentum, every f steps
        O2   = NS(M2_k)            (matrices)   |   M2_k / ((1 - m2^k) f)   (vectors: bias-corrected
                                                                             chunk mean, gradient scale)
        O2 is then held fixed until the next chunk completes (O2 = 0 before the first one)
    O1_t = NS(M1_t)                (matrices)   |   M1_t / (1 - m1^t)       (vectors)
    p   <- p - lr * (O1_t + alpha O2) / (sqrt(V_t / (1 - v1^t)) + eps)

NS = Newton-Schulz orthogonalisation per seed (newton_schulz.py, ns_steps iterations); "matrices"
are parameters with ndim >= 3 (seed axis + [rows, cols]), "vectors" everything else.
With alpha = 0, vectors follow Adam(betas=(m1, v1)) exactly and matrices NS(M1) / (sqrt(V_hat) + eps).
Because NS outputs have entries ~1/sqrt(max(rows, cols)) and V_hat^0.5 is the gradient scale, the
matrix update per element is ~ lr / (|g| sqrt(cols)): far larger than Adam's ~lr at equal lr.
"""
import torch

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
                    s.update(t=0, k=0, M1=torch.zeros_like(g), V=torch.zeros_like(g), M2=torch.zeros_like(g),
                             chunk=torch.zeros_like(g), O2=torch.zeros_like(g))
                s["t"] += 1
                t, matrix = s["t"], is_matrix(p)
                s["M1"].lerp_(g, 1 - m1)
                s["V"].mul_(v1).addcmul_(g, g, value=1 - v1)
                s["chunk"].add_(g)
                if t % f == 0:
                    s["k"] += 1
                    s["M2"].lerp_(s["chunk"], 1 - m2)
                    s["chunk"].zero_()
                    s["O2"] = orthogonalise(s["M2"], ns) if matrix else s["M2"] / ((1 - m2 ** s["k"]) * f)
                o1 = orthogonalise(s["M1"], ns) if matrix else s["M1"] / (1 - m1 ** t)
                denom = (s["V"] / (1 - v1 ** t)).sqrt_().add_(group["eps"])
                p.sub_(group["lr"] * (o1 + group["alpha"] * s["O2"]) / denom)
