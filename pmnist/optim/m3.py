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

One count t (and k) per parameter group: its parameters step together, so the step's scalars (bias
corrections, the boundary flag) are computed once per step, not once per parameter. On CUDA the
elementwise part of each parameter's step (M1, V, chunk, M2, P1, P2; for vectors their update too)
runs in one Triton kernel (pmnist/fast/m3_triton.py: M3 was launch-bound); `M3._moments` is the reference and
the CPU path.

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

from pmnist.optim.muon import elementwise_kernels, shape_scale, step_counter
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
            slow = group["alpha"] != 0                  # a hyperparameter, not a device value
            params = [p for p in group["params"] if p.grad is not None]
            if not params:
                continue
            scalars = self._advance(group, params[0], slow)
            matrices, directions = [], []              # NS inputs: per matrix P1 (and P2 if slow)
            for p in params:
                s = self.state[p]
                if not s:
                    s.update({name: torch.zeros_like(p.grad) for name in ("M1", "V", "M2", "chunk", "O2")})
                vector, fused = not is_matrix(p), elementwise_kernels(p)
                if fused is not None:                  # CUDA: the same formulas in one kernel
                    if "packed" not in scalars:        # the kernel reads them from one float32 tensor
                        scalars["packed"] = fused.pack(*(scalars[k] for k in ("bc1", "bcv", "boundary", "bc2f")
                                                         if k in scalars))
                    out = fused.moments(p, s, scalars["packed"], group, slow, vector)
                else:
                    out = self._moments(p, s, scalars, group, slow, vector)
                if not vector:
                    matrices.append(p)
                    directions += list(out) if slow else [out[0]]
            if not matrices:
                continue
            orthogonal = orthogonalise_many(directions, group["ns_steps"], DTYPES[group["ns_dtype"]])
            per = 2 if slow else 1
            for i, p in enumerate(matrices):
                o1 = orthogonal[per * i]
                if slow:
                    O2 = self.state[p]["O2"]
                    O2.copy_(torch.where(scalars["boundary"], orthogonal[per * i + 1], O2))
                    o1 = o1.add(O2, alpha=group["alpha"])
                p.sub_(group["lr"] * shape_scale(p) * o1)

    @staticmethod
    def _advance(group, like, slow):
        """Advance the group's step count t (and chunk count k) and return the step's scalars, 0-dim
        device tensors: bc1 = 1 - m1^t, bcv = 1 - v1^t and, with the slow branch, boundary = (t mod f == 0)
        and bc2f = (1 - m2^k) f. One count per group (its parameters step together), so these are computed
        once per step, not once per parameter."""
        m1, m2, v1, f = group["m1"], group["m2"], group["v1"], group["frequency"]
        if "counts" not in group:
            group["counts"] = {"t": step_counter(like), "k": step_counter(like)}
        t, k = group["counts"]["t"], group["counts"]["k"]
        t.add_(1)
        out = {"bc1": 1 - m1 ** t, "bcv": 1 - v1 ** t}
        if slow:
            out["boundary"] = torch.remainder(t, f) == 0                       # t = k f
            k.add_(out["boundary"].to(k.dtype))
            # k = 0 only before the first boundary, where M2 = 0: clamping keeps P2 = 0 (not 0/0)
            out["bc2f"] = (1 - m2 ** k.clamp_min(1)) * f
        return out

    @staticmethod
    def _moments(p, s, scalars, group, slow, vector):
        """The reference (and CPU) elementwise step of one parameter: updates M1, V (and the chunk sum,
        M2); matrices -> (P1, P2 or None) for Newton-Schulz, vectors -> None after p's own update."""
        g = p.grad
        s["M1"].lerp_(g, 1 - group["m1"])
        s["V"].mul_(group["v1"]).addcmul_(g, g, value=1 - group["v1"])
        denom = (s["V"] / scalars["bcv"]).sqrt_().add_(group["eps"])
        p1, p2 = s["M1"] / scalars["bc1"] / denom, None
        if slow:
            # the slow branch, branchless: computed every step, kept only where a chunk completes
            boundary = scalars["boundary"]
            s["chunk"].add_(g)
            s["M2"].copy_(torch.where(boundary, s["M2"].lerp(s["chunk"], 1 - group["m2"]), s["M2"]))
            s["chunk"].masked_fill_(boundary, 0)
            p2 = s["M2"] / scalars["bc2f"] / denom
        if not vector:
            return p1, p2
        if slow:
            s["O2"].copy_(torch.where(boundary, p2, s["O2"]))
            p1 = p1.add_(s["O2"], alpha=group["alpha"])
        p.sub_(group["lr"] * p1)
        return None

