"""Newton-Schulz of a small matrix in ONE Triton program (CUDA only): the whole bf16 iteration of one
slice in registers and shared memory, one launch per call instead of ~20.

Why: Muon's and M3's steps were launch-bound in Newton-Schulz: per
matrix shape and call, a norm, a division, two casts and three small GEMMs per iteration, each a few
microseconds, and baddbmm's copy of its addend. The MLP's two smallest matrices ([64, 128], [10, 64] per
seed) run in one program per slice; the larger ones stay on cuBLAS (newton_schulz.py), faster there.

Same arithmetic as the bf16 reference (newton_schulz.newton_schulz): the normalisation in float32,
X, A = X X^T, B = b A + c A A and a X + B X each rounded to bfloat16, the products accumulated in
float32 (tensor cores). Only the accumulation order differs (tests/test_optimizers.py compares the
two, compiled on CUDA and in Triton's interpreter on the CPU). Zero padding to powers of two is exact:
zero rows and columns of X stay zero through every step.
"""
import os

import torch
import triton
import triton.language as tl

# Largest padded [rows, cols] one program iterates. H100, 20 seeds: with [128, 256] in one program too,
# Muon's step took 720 us (that program ~250 us: it spills registers), with it on cuBLAS 537, with only
# [10, 64] here 587, with none 640.
MAX_ELEMENTS = 64 * 128
# Triton's CPU interpreter (3.8) multiplies bfloat16 tiles wrongly (and rounds to bf16 by truncation):
# there the operands, already bf16 values, are multiplied as float32 (the same exact products).
DOT_IN_BF16 = os.environ.get("TRITON_INTERPRET") != "1"


@triton.jit
def _mm(p, q, BF16: tl.constexpr):
    if BF16:
        return tl.dot(p, q)
    return tl.dot(p.to(tl.float32), q.to(tl.float32), input_precision="ieee")


@triton.jit
def _newton_schulz(g_ptr, out_ptr, rows, cols, stride_s, stride_r, stride_c, eps, a, b, c,
                   STEPS: tl.constexpr, R: tl.constexpr, K: tl.constexpr, BF16: tl.constexpr):
    base = tl.program_id(0) * stride_s
    r, k = tl.arange(0, R)[:, None], tl.arange(0, K)[None, :]
    inside = (r < rows) & (k < cols)
    offsets = base + r * stride_r + k * stride_c
    g = tl.load(g_ptr + offsets, mask=inside, other=0.0)
    x = (g / (tl.sqrt(tl.sum(g * g)) + eps)).to(tl.bfloat16)
    for _ in tl.static_range(STEPS):
        A = _mm(x, tl.trans(x), BF16).to(tl.bfloat16)                                 # [R, R]
        B = (b * A.to(tl.float32) + c * _mm(A, A, BF16)).to(tl.bfloat16)
        x = (a * x.to(tl.float32) + _mm(B, x, BF16)).to(tl.bfloat16)
    tl.store(out_ptr + offsets, x.to(tl.float32), mask=inside)


def _padded(n):
    return max(16, triton.next_power_of_2(n))   # tl.dot needs every side >= 16


def supported(G, dtype):
    """G [S, rows, cols] float32 on CUDA, iterated in bfloat16, small enough for one program."""
    side = sorted(G.shape[-2:])
    return (G.is_cuda and G.dtype == torch.float32 and dtype == torch.bfloat16 and G.ndim == 3
            and _padded(side[0]) * _padded(side[1]) <= MAX_ELEMENTS)


def newton_schulz(G, steps, coeffs, eps):
    """The bf16 Newton-Schulz of every slice of G [S, rows, cols] (float32): returns float32, G's shape."""
    G = G.contiguous()
    out = torch.empty_like(G)
    rows, cols = G.shape[1:]
    stride_r, stride_c = G.stride(1), G.stride(2)
    if rows > cols:   # iterate on the wide orientation (the smaller Gram matrix): read G transposed
        rows, cols, stride_r, stride_c = cols, rows, stride_c, stride_r
    R, K = _padded(rows), _padded(cols)
    _newton_schulz[(G.shape[0],)](G, out, rows, cols, G.stride(0), stride_r, stride_c, eps, *coeffs,
                                  STEPS=steps, R=R, K=K, BF16=DOT_IN_BF16)
    return out
