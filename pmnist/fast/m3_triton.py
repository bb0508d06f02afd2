"""M3's elementwise work of one parameter per step in one Triton kernel (CUDA only); the same kernel
does Adam's step of Muon's vectors (M3 without its slow branch is Adam's arithmetic), and a second
one Muon's momentum.

The reference (the torch code in m3.py's `M3._moments`) updates M1, V, the chunk sum and M2 and forms
the preconditioned directions P1 (and P2) with about fifteen elementwise kernels per parameter, each a
few microseconds: M3's step was launch-bound. Here one kernel reads
the gradient and the state once, writes the state back and either the directions (matrices: they go
on to Newton-Schulz) or, for vectors, the parameter's update itself (p <- p - lr (P1 + alpha O2)).
The step's scalars (bias corrections, the chunk-boundary flag) come in as a small device tensor, so a
CUDA graph replays the kernel with the current step count. Same formulas as the reference, in the same
order; only the floating-point rounding may differ (tests/test_optimizers.py compares the two,
compiled on CUDA and in Triton's interpreter on the CPU).
"""
import torch
import triton
import triton.language as tl

BLOCK = 1024


@triton.jit
def _moments(g_ptr, m1_ptr, v_ptr, chunk_ptr, m2_ptr, o2_ptr, p_ptr, p1_ptr, p2_ptr, scal_ptr, n,
             m1, v1, m2, eps, lr, alpha, SLOW: tl.constexpr, VECTOR: tl.constexpr, BLOCK: tl.constexpr):
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    inside = offs < n
    bc1, bcv = tl.load(scal_ptr), tl.load(scal_ptr + 1)   # 1 - m1^t, 1 - v1^t
    g = tl.load(g_ptr + offs, mask=inside, other=0.0)
    M1 = tl.load(m1_ptr + offs, mask=inside, other=0.0)
    M1 = M1 + (1.0 - m1) * (g - M1)                         # lerp(M1, g, 1 - m1), 1 - m1 < 0.5
    tl.store(m1_ptr + offs, M1, mask=inside)
    V = tl.load(v_ptr + offs, mask=inside, other=0.0) * v1 + (1.0 - v1) * g * g
    tl.store(v_ptr + offs, V, mask=inside)
    denom = tl.sqrt(V / bcv) + eps
    P1 = M1 / bc1 / denom
    if SLOW:
        boundary, bc2f = tl.load(scal_ptr + 2), tl.load(scal_ptr + 3)   # t mod f == 0; (1 - m2^k) f
        chunk = tl.load(chunk_ptr + offs, mask=inside, other=0.0) + g
        M2 = tl.load(m2_ptr + offs, mask=inside, other=0.0)
        M2 = tl.where(boundary != 0, chunk - (chunk - M2) * m2, M2)     # lerp(M2, chunk, 1 - m2), 1 - m2 >= 0.5
        tl.store(m2_ptr + offs, M2, mask=inside)
        tl.store(chunk_ptr + offs, tl.where(boundary != 0, 0.0, chunk), mask=inside)
        P2 = M2 / bc2f / denom
    if VECTOR:
        if SLOW:
            O2 = tl.where(boundary != 0, P2, tl.load(o2_ptr + offs, mask=inside, other=0.0))
            tl.store(o2_ptr + offs, O2, mask=inside)
            P1 = P1 + alpha * O2
        p = tl.load(p_ptr + offs, mask=inside)
        tl.store(p_ptr + offs, p - lr * P1, mask=inside)
    else:
        tl.store(p1_ptr + offs, P1, mask=inside)
        if SLOW:
            tl.store(p2_ptr + offs, P2, mask=inside)


def pack(*scalars):
    """The step's 0-dim device scalars (float64 counts' bias corrections, a bool boundary) as the one
    float32 tensor the kernel reads, in the order given."""
    return torch.stack([s.to(torch.float64) for s in scalars]).float()


def supported(p):
    """Whether these kernels handle a CUDA parameter: contiguous float32, gradient too."""
    return p.dtype == torch.float32 and p.is_contiguous() and p.grad.is_contiguous()


def moments(p, state, scalars, group, slow, vector):
    """M3's elementwise step of p (see m3.py) in one kernel. scalars: float32 device tensor
    (1 - m1^t, 1 - v1^t, and with the slow branch boundary, (1 - m2^k) f). Matrices: returns (P1, P2 or None) for Newton-Schulz;
    vectors: updates p in place and returns None."""
    g, n = p.grad, p.numel()
    p1 = p2 = None
    if not vector:
        p1 = torch.empty_like(g)
        p2 = torch.empty_like(g) if slow else None
    dummy = g   # pointers a specialisation never touches
    _moments[(triton.cdiv(n, BLOCK),)](
        g, state["M1"], state["V"], state["chunk"], state["M2"], state["O2"], p,
        dummy if p1 is None else p1, dummy if p2 is None else p2, scalars, n,
        group["m1"], group["v1"], group["m2"], group["eps"], group["lr"], group["alpha"],
        SLOW=slow, VECTOR=vector, BLOCK=BLOCK)
    return None if vector else (p1, p2)


def adam_update(p, exp_avg, exp_avg_sq, scalars, betas, eps, lr):
    """Adam's step of p in place (Muon's vectors): the kernel above without the slow branch.
    scalars: float32 [2] device tensor (1 - b1^t, 1 - b2^t)."""
    g, n = p.grad, p.numel()
    _moments[(triton.cdiv(n, BLOCK),)](
        g, exp_avg, exp_avg_sq, g, g, g, p, g, g, scalars, n, betas[0], betas[1], 0.0, eps, lr, 0.0,
        SLOW=False, VECTOR=True, BLOCK=BLOCK)


@triton.jit
def _momentum(g_ptr, buf_ptr, out_ptr, n, mu, NESTEROV: tl.constexpr, BLOCK: tl.constexpr):
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    inside = offs < n
    g = tl.load(g_ptr + offs, mask=inside)
    buf = tl.load(buf_ptr + offs, mask=inside) * mu + g
    tl.store(buf_ptr + offs, buf, mask=inside)
    if NESTEROV:
        tl.store(out_ptr + offs, g + mu * buf, mask=inside)


def momentum_direction(g, buf, mu, nesterov):
    """Muon's momentum: buf <- mu buf + g in place; returns g + mu buf (Nesterov) or buf itself."""
    out = torch.empty_like(g) if nesterov else buf
    _momentum[(triton.cdiv(g.numel(), BLOCK),)](g, buf, out, g.numel(), mu, NESTEROV=nesterov, BLOCK=BLOCK)
    return out
