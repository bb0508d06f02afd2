"""Muon: MomentUm Orthogonalised by Newton-Schulz (Jordan et al. 2024), seed-batched.

Weight matrices (ndim >= 3 here: seed axis + [rows, cols]), per seed, step t, gradient g:

    B_t = mu B_{t-1} + g                      (momentum buffer, B_0 = 0)
    U_t = g + mu B_t  if nesterov else B_t
    W  <- W - lr * max(1, rows/cols)^0.5 * NS(U_t)        (NS: newton_schulz.py, ns_steps iterations)

NS(U) has spectral norm ~1 whatever the gradient scale, so lr is the step size in spectral norm
(typical lr ~0.02). Biases and other vectors (ndim <= 2 here) take an Adam step with the same lr:

    m = b1 m + (1-b1) g,  v = b2 v + (1-b2) g^2,  p <- p - lr * (m/(1-b1^t)) / (sqrt(v/(1-b2^t)) + eps)
"""
import torch

from pmnist.optim.newton_schulz import is_matrix, orthogonalise


def adam_direction(state, g, betas, eps):
    """Adam's bias-corrected step direction for g; keeps m, v, t in `state`."""
    b1, b2 = betas
    if "exp_avg" not in state:
        state["t"], state["exp_avg"], state["exp_avg_sq"] = 0, torch.zeros_like(g), torch.zeros_like(g)
    state["t"] += 1
    t, m, v = state["t"], state["exp_avg"], state["exp_avg_sq"]
    m.lerp_(g, 1 - b1)
    v.mul_(b2).addcmul_(g, g, value=1 - b2)
    return (m / (1 - b1 ** t)) / ((v / (1 - b2 ** t)).sqrt() + eps)


class Muon(torch.optim.Optimizer):
    def __init__(self, params, lr, momentum=0.95, nesterov=True, ns_steps=5, adam_betas=(0.9, 0.999), eps=1e-8):
        super().__init__(params, dict(lr=lr, momentum=momentum, nesterov=nesterov, ns_steps=ns_steps,
                                      adam_betas=tuple(adam_betas), eps=eps))

    @torch.no_grad()
    def step(self, closure=None):
        for group in self.param_groups:
            lr, mu = group["lr"], group["momentum"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                g, state = p.grad, self.state[p]
                if not is_matrix(p):
                    p.sub_(lr * adam_direction(state, g, group["adam_betas"], group["eps"]))
                    continue
                buf = state.setdefault("momentum_buffer", torch.zeros_like(g))
                buf.mul_(mu).add_(g)
                u = g.add(buf, alpha=mu) if group["nesterov"] else buf
                rows, cols = p.shape[1], p[0, 0].numel()
                p.sub_(orthogonalise(u, group["ns_steps"]), alpha=lr * max(1.0, rows / cols) ** 0.5)
