"""Muon: MomentUm Orthogonalised by Newton-Schulz (Jordan et al. 2024), seed-batched.

Weight matrices (ndim >= 3 here: seed axis + [rows, cols]), per seed, step t, gradient g:

    B_t = mu B_{t-1} + g                      (momentum buffer, B_0 = 0)
    U_t = g + mu B_t  if nesterov else B_t
    W  <- W - lr * max(1, rows/cols)^0.5 * NS(U_t)        (NS: newton_schulz.py, ns_steps iterations)

NS(U) has spectral norm ~1 whatever the gradient scale, so lr is the step size in spectral norm
(typical lr ~0.02). NS runs in `ns_dtype` (bfloat16 by default, as the reference implementation;
float32 for the control), one call per distinct matrix shape per step (matrices of equal shape are
batched together with the seeds). Biases and other vectors (ndim <= 2 here) take an Adam step with
the same lr:

    m = b1 m + (1-b1) g,  v = b2 v + (1-b2) g^2,  p <- p - lr * (m/(1-b1^t)) / (sqrt(v/(1-b2^t)) + eps)

CUDA-graph safe: all state (buffers, Adam's step count t) lives in device tensors created on the first
step and updated in place; step() never branches in Python on a step count or a value and never syncs.
"""
import torch

from pmnist.optim.newton_schulz import DTYPES, is_matrix, orthogonalise_many


def step_counter(like):
    """A step count t as a 0-dim float64 tensor on `like`'s device: advanced in place (t.add_(1)) and
    used in bias corrections as a tensor (1 - beta ** t), so a CUDA graph replaying step() sees the
    current count instead of the Python value read at capture. float64 counts exactly (t < 2^53) and
    keeps 1 - beta ** t as precise as the Python float it replaces; the 0-dim tensor does not promote
    the float32 tensors it scales."""
    return torch.zeros((), dtype=torch.float64, device=like.device)


def adam_direction(state, g, betas, eps):
    """Adam's bias-corrected step direction for g; keeps m, v, t in `state` (all device tensors)."""
    b1, b2 = betas
    if "exp_avg" not in state:
        state["t"], state["exp_avg"], state["exp_avg_sq"] = step_counter(g), torch.zeros_like(g), torch.zeros_like(g)
    t, m, v = state["t"], state["exp_avg"], state["exp_avg_sq"]
    t.add_(1)
    m.lerp_(g, 1 - b1)
    v.mul_(b2).addcmul_(g, g, value=1 - b2)
    return (m / (1 - b1 ** t)) / ((v / (1 - b2 ** t)).sqrt() + eps)


def shape_scale(p):
    """Muon's max(1, rows/cols)^0.5 for a seed-batched matrix [S, rows, cols...]."""
    return max(1.0, p.shape[1] / p[0, 0].numel()) ** 0.5


class Muon(torch.optim.Optimizer):
    def __init__(self, params, lr, momentum=0.95, nesterov=True, ns_steps=5, ns_dtype="bfloat16",
                 adam_betas=(0.9, 0.999), eps=1e-8):
        if ns_dtype not in DTYPES:
            raise ValueError(f"ns_dtype must be one of {', '.join(DTYPES)}, got {ns_dtype!r}")
        super().__init__(params, dict(lr=lr, momentum=momentum, nesterov=nesterov, ns_steps=ns_steps,
                                      ns_dtype=ns_dtype, adam_betas=tuple(adam_betas), eps=eps))

    @torch.no_grad()
    def step(self, closure=None):
        for group in self.param_groups:
            lr, mu = group["lr"], group["momentum"]
            matrices, directions = [], []
            for p in group["params"]:
                if p.grad is None:
                    continue
                g, state = p.grad, self.state[p]
                if not is_matrix(p):
                    p.sub_(lr * adam_direction(state, g, group["adam_betas"], group["eps"]))
                    continue
                if "momentum_buffer" not in state:
                    state["momentum_buffer"] = torch.zeros_like(g)
                buf = state["momentum_buffer"]
                buf.mul_(mu).add_(g)
                matrices.append(p)
                directions.append(g.add(buf, alpha=mu) if group["nesterov"] else buf)
            orthogonal = orthogonalise_many(directions, group["ns_steps"], DTYPES[group["ns_dtype"]])
            for p, o in zip(matrices, orthogonal):
                p.sub_(o, alpha=lr * shape_scale(p))
