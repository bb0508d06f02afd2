"""Deep momentum's step for its two-layer memory MLP as two Triton kernels (CUDA only).

The reference step (the autograd code in deep_momentum.py's `DeepMomentum.step`) runs the memory MLP
h(x) = W2 . silu(W1 x + b1) + b2 (hidden H) on every coordinate with batched matmuls: it writes
[S, n, H] activations for the forward, autograd's backward and the second read-out, about 4.7 ms per
step at 20 seeds on an H200, almost all memory traffic and gemv kernels for a
function of one number. Here each coordinate's MLP lives in registers; h, h' and the inner gradients
are written out by hand (delta objective shown; dot: r = -u):

    x = m / c,  z_k = W1_k x + b1_k,  a_k = silu(z_k),  h = sum_k W2_k a_k + b2,  M = m + c h
    r = M - u                                           dL2/dM of the inner objective
    dL2/dm    = r (1 + h'(x)),   h'(x) = sum_k W2_k silu'(z_k) W1_k
    dL2/dW2_k = sum_j r_j c a_jk          dL2/db2   = sum_j r_j c
    dL2/dW1_k = sum_j r_j c W2_k silu'(z_jk) x_j     dL2/db1_k = sum_j r_j c W2_k silu'(z_jk)

Kernel 1 (`_inner_step`) reads m and u once, writes the new table m <- alpha m - eta_m dL2/dm in
place and one row of partial sums per block; the partial sums are added in torch (fixed order: the
result is deterministic, no atomics). The MLP's weights then take their inner step in torch ([S, H]
tensors). Kernel 2 (`_read_out`) reads the new table and weights and applies p <- p - lr M.
The arithmetic is the reference's up to the order of floating-point sums (tests/test_optimizers.py
compares the two, compiled on CUDA and in Triton's interpreter on the CPU); the reference stays the
CPU path.
"""
import torch
import triton
import triton.language as tl

ACTIVATIONS_PER_PROGRAM = 4096   # [BLOCK, H] activations stay in registers: BLOCK = this / H


@triton.jit
def _mlp(x, w1, b1, w2, b2):
    """[BLOCK] inputs -> (h [BLOCK], a, sig, z [BLOCK, H]) for one seed's MLP (weights [H])."""
    z = x[:, None] * w1[None, :] + b1[None, :]
    sig = tl.sigmoid(z)
    a = z * sig
    return tl.sum(a * w2[None, :], axis=1) + b2, a, sig, z


@triton.jit
def _seed_memory(w1_ptr, b1_ptr, w2_ptr, b2_ptr, c_ptr, s, H: tl.constexpr, HP: tl.constexpr):
    """Seed s's MLP weights (each [HP]; HP: H rounded up to a power of two, the padding zero, so it adds
    nothing) and its scale c."""
    hs = tl.arange(0, HP)
    hmask = hs < H
    return (tl.load(w1_ptr + s * H + hs, mask=hmask, other=0.0), tl.load(b1_ptr + s * H + hs, mask=hmask, other=0.0),
            tl.load(w2_ptr + s * H + hs, mask=hmask, other=0.0), tl.load(b2_ptr + s), tl.load(c_ptr + s))


@triton.jit
def _inner_step(m_ptr, u_ptr, c_ptr, w1_ptr, b1_ptr, w2_ptr, b2_ptr, part_ptr, n, n_blocks, alpha, eta_m,
                DELTA: tl.constexpr, H: tl.constexpr, HP: tl.constexpr, BLOCK: tl.constexpr):
    s, blk = tl.program_id(0), tl.program_id(1)
    offs = blk * BLOCK + tl.arange(0, BLOCK)
    inside = offs < n
    hs = tl.arange(0, HP)
    w1, b1, w2, b2, c = _seed_memory(w1_ptr, b1_ptr, w2_ptr, b2_ptr, c_ptr, s, H, HP)
    m = tl.load(m_ptr + s * n + offs, mask=inside, other=0.0)
    u = tl.load(u_ptr + s * n + offs, mask=inside, other=0.0)
    x = m / c
    h, a, sig, z = _mlp(x, w1, b1, w2, b2)
    if DELTA:
        r = m + c * h - u
    else:
        r = -u
    r = tl.where(inside, r, 0.0)                     # coordinates past the end add nothing
    dsilu = sig * (1.0 + z * (1.0 - sig))
    dh_dx = tl.sum(dsilu * (w2 * w1)[None, :], axis=1)
    tl.store(m_ptr + s * n + offs, alpha * m - eta_m * (r * (1.0 + dh_dx)), mask=inside)
    rc = r * c
    t = rc[:, None] * dsilu * w2[None, :]
    row = part_ptr + (s * n_blocks + blk) * 4 * HP
    tl.store(row + hs, tl.sum(t * x[:, None], axis=0))          # dW1
    tl.store(row + HP + hs, tl.sum(t, axis=0))                  # db1
    tl.store(row + 2 * HP + hs, tl.sum(rc[:, None] * a, axis=0))  # dW2
    tl.store(row + 3 * HP + hs, tl.where(hs == 0, tl.sum(rc, axis=0), 0.0))  # db2 (slot 0)


@triton.jit
def _read_out(p_ptr, m_ptr, c_ptr, w1_ptr, b1_ptr, w2_ptr, b2_ptr, n, lr,
              H: tl.constexpr, HP: tl.constexpr, BLOCK: tl.constexpr):
    s, blk = tl.program_id(0), tl.program_id(1)
    offs = blk * BLOCK + tl.arange(0, BLOCK)
    inside = offs < n
    w1, b1, w2, b2, c = _seed_memory(w1_ptr, b1_ptr, w2_ptr, b2_ptr, c_ptr, s, H, HP)
    m = tl.load(m_ptr + s * n + offs, mask=inside, other=0.0)
    h, _, _, _ = _mlp(m / c, w1, b1, w2, b2)
    p = tl.load(p_ptr + s * n + offs, mask=inside)
    tl.store(p_ptr + s * n + offs, p - lr * (m + c * h), mask=inside)


def supported(p):
    """Whether `step` handles a CUDA parameter with a two-layer memory: contiguous float32."""
    return p.dtype == torch.float32 and p.is_contiguous()


def step(p, u, m, mlp, c, lr, alpha, eta_m, memory_lr, delta):
    """One deep-momentum step of parameter p [S, ...] (float32, contiguous) with gradient u [S, n]:
    the table m [S, n] and the MLP's weights mlp = [W1 [S,1,H], b1 [S,1,H], W2 [S,H,1], b2 [S,1,1]] are
    updated in place, then p <- p - lr M. c [S, 1]: memory_scale(m, u) before the inner step."""
    S, n = m.shape
    W1, b1, W2, b2 = mlp
    H = W1.shape[-1]
    HP = triton.next_power_of_2(H)
    block = max(16, ACTIVATIONS_PER_PROGRAM // HP)
    n_blocks = triton.cdiv(n, block)
    u, c = u.contiguous(), c.contiguous()
    part = torch.empty(S, n_blocks, 4, HP, device=m.device, dtype=torch.float32)
    grid = (S, n_blocks)
    _inner_step[grid](m, u, c, W1, b1, W2, b2, part, n, n_blocks, alpha, eta_m,
                      DELTA=delta, H=H, HP=HP, BLOCK=block)
    grads = part.sum(1)                                          # [S, 4, HP], a fixed order
    scale = memory_lr / (n * c * c)                              # [S, 1], as the reference
    for w, g in zip(mlp, (grads[:, 0, :H], grads[:, 1, :H], grads[:, 2, :H], grads[:, 3, :1])):
        w.mul_(alpha).sub_(g.reshape(w.shape) * scale.view(S, 1, 1))
    _read_out[grid](p, m, c, W1, b1, W2, b2, n, lr, H=H, HP=HP, BLOCK=block)
