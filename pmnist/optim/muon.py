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

Adam's step count t is one per parameter group (its parameters step together: the bias corrections are
computed once per step). On CUDA the elementwise work runs in Triton kernels (pmnist/fast/m3_triton.py: Adam's step
of each vector in one kernel, the momentum and Nesterov direction of each matrix in another; Muon's
step was launch-bound); the torch code here is the reference and the CPU path.

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


def adam_direction(state, g, bc1, bc2, betas, eps):
    """Adam's bias-corrected step direction for g (bc1 = 1 - b1^t, bc2 = 1 - b2^t: 0-dim device
    tensors of the group's step count); keeps m and v in `state`. The reference and the CPU path."""
    b1, b2 = betas
    m, v = state["exp_avg"], state["exp_avg_sq"]
    m.lerp_(g, 1 - b1)
    v.mul_(b2).addcmul_(g, g, value=1 - b2)
    return (m / bc1) / ((v / bc2).sqrt() + eps)


def elementwise_kernels(p):
    """pmnist.fast.m3_triton (M3's elementwise step, Adam's step of Muon's vectors, Muon's momentum)
    where it handles p (CUDA, float32, contiguous), else None: the torch code of M3 and Muon is the
    reference and the CPU path."""
    if not p.is_cuda:
        return None
    from pmnist.fast import m3_triton   # imports triton: only where CUDA is used
    return m3_triton if m3_triton.supported(p) else None


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
            lr, mu, (b1, b2) = group["lr"], group["momentum"], group["adam_betas"]
            params = [p for p in group["params"] if p.grad is not None]
            vectors = [p for p in params if not is_matrix(p)]
            if vectors:   # Adam's bias corrections, once per step: one count t per group
                if "t" not in group:
                    group["t"] = step_counter(vectors[0])
                t = group["t"].add_(1)
                bc1, bc2 = 1 - b1 ** t, 1 - b2 ** t
                packed = None
            matrices, directions = [], []
            for p in params:
                g, state, fused, vector = p.grad, self.state[p], elementwise_kernels(p), not is_matrix(p)
                if not state:
                    state.update({"exp_avg": torch.zeros_like(g), "exp_avg_sq": torch.zeros_like(g)} if vector
                                 else {"momentum_buffer": torch.zeros_like(g)})
                if vector:
                    if fused is None:
                        p.sub_(lr * adam_direction(state, g, bc1, bc2, (b1, b2), group["eps"]))
                        continue
                    if packed is None:
                        packed = fused.pack(bc1, bc2)
                    fused.adam_update(p, state["exp_avg"], state["exp_avg_sq"], packed, (b1, b2), group["eps"], lr)
                    continue
                buf = state["momentum_buffer"]
                if fused is not None:
                    directions.append(fused.momentum_direction(g, buf, mu, group["nesterov"]))
                else:
                    buf.mul_(mu).add_(g)
                    directions.append(g.add(buf, alpha=mu) if group["nesterov"] else buf)
                matrices.append(p)
            orthogonal = orthogonalise_many(directions, group["ns_steps"], DTYPES[group["ns_dtype"]])
            for p, o in zip(matrices, orthogonal):
                p.sub_(o, alpha=lr * shape_scale(p))
