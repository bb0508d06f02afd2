"""Newton-Schulz orthogonalisation, batched over the leading seed axis (and over matrices of one shape).

For a matrix G = U S V^T, returns approximately U V^T (every singular value mapped towards 1) using
the quintic iteration of Muon (Jordan et al. 2024, github.com/KellerJordan/Muon):

    X_0 = G / (||G||_F + eps)             (per seed, so every singular value is <= 1)
    X_{k+1} = a X_k + (b A_k + c A_k^2) X_k,   A_k = X_k X_k^T,   (a, b, c) = (3.4445, -4.7750, 2.0315)

iterated on the wide orientation (rows <= cols, so A is the smaller Gram matrix). The coefficients
trade exactness for speed: after 5 steps the singular values land in roughly [0.7, 1.2] rather than
exactly at 1 (tiny ones, below ~1e-3 of the norm, stay small).

Precision (`dtype`): the reference implementation iterates in bfloat16 (tensor cores; its claim and
ours: the iteration is self-correcting and its output only needs to be roughly orthogonal), so that is
the default (`ns_dtype: bfloat16` in the optimizers' args); `float32` is the control. The Frobenius
normalisation is done in the input's precision before the cast, and the result is returned in the
input's dtype. bench/ns_precision.py measures the error against float64 and the time per call.
Each iteration is three batched matmuls, two of them fused with the axpy (baddbmm). On CUDA, bf16
iterations of small matrices run whole in one Triton program per slice (pmnist/fast/newton_schulz_triton.py).
"""
import torch

from pmnist.fast.streams import side_by_side

NS_COEFFS = (3.4445, -4.7750, 2.0315)
DTYPES = {"bfloat16": torch.bfloat16, "float32": torch.float32, "float64": torch.float64}


def ns_dtype(name):
    if name not in DTYPES:
        raise ValueError(f"ns_dtype must be one of {', '.join(DTYPES)}, got {name!r}")
    return DTYPES[name]


def is_matrix(p):
    """A weight matrix of one network: seed axis + at least 2 dims (trailing dims are flattened)."""
    return p.ndim >= 3


def one_program_kernel(G, dtype):
    """pmnist.fast.newton_schulz_triton where it iterates G (CUDA, bf16, a small matrix per slice),
    else None: the torch code below is the reference, the CPU path and the path of large matrices."""
    if not G.is_cuda:
        return None
    from pmnist.fast import newton_schulz_triton   # imports triton: only where CUDA is used
    return newton_schulz_triton if newton_schulz_triton.supported(G, dtype) else None


def newton_schulz(G, steps=5, dtype=torch.float32, eps=1e-7):
    """Orthogonalise G [B, rows, cols] per slice (dim 0: seeds, or seeds x matrices). Iterates in
    `dtype` (a torch dtype or its name); returns G's dtype."""
    if isinstance(dtype, str):
        dtype = ns_dtype(dtype)
    kernel = one_program_kernel(G, dtype)
    if kernel is not None:
        return kernel.newton_schulz(G, steps, NS_COEFFS, eps)
    a, b, c = NS_COEFFS
    tall = G.size(-2) > G.size(-1)
    X = G.mT if tall else G       # iterate on the smaller Gram matrix X X^T
    X = (X / (X.norm(dim=(-2, -1), keepdim=True) + eps)).to(dtype)
    for _ in range(steps):
        A = torch.bmm(X, X.mT)
        B = torch.baddbmm(A, A, A, beta=b, alpha=c)     # b A + c A A
        X = torch.baddbmm(X, B, X, beta=a)             # a X + B X
    if tall:
        X = X.mT
    return X.to(G.dtype)


def orthogonalise(M, steps, dtype=torch.float32):
    """newton_schulz on a parameter-shaped tensor [S, d1, d2, ...], viewed as [S, d1, d2*...]."""
    return newton_schulz(M.reshape(M.shape[0], M.shape[1], -1), steps, dtype).reshape(M.shape)


# Slices per Newton-Schulz call at most. M3 at 20 seeds batched P1 and P2 of a matrix into one
# [40, 256, 784] call, and replaying its step's CUDA graph segfaulted every time; the same run with
# calls of at most 20 slices finishes (side by side on one H200: 40 crashed, 20 finished; cause inside
# torch/cuBLAS unknown). Each slice is still normalised and iterated alone.
MAX_BATCH = 20


def _calls(sizes):
    """Pack tensors (their slice counts, in order) into Newton-Schulz calls of at most MAX_BATCH slices:
    lists of indices; a tensor with more slices than that is a call of its own (split into views)."""
    calls, load = [], MAX_BATCH
    for i, n in enumerate(sizes):
        if load + n > MAX_BATCH:
            calls.append([])
            load = 0
        calls[-1].append(i)
        load += n
    return calls


def orthogonalise_many(tensors, steps, dtype=torch.float32):
    """orthogonalise() of every tensor, few Newton-Schulz calls: tensors of equal [d1, d2*...] share a
    call, whole, while it holds at most MAX_BATCH slices (each slice is still normalised and iterated
    alone, so the result equals one call per tensor). Concatenates only tensors that share a call:
    M3's P1 and P2 at 20 seeds are two calls of 20 with no copy. On CUDA the calls run side by side,
    each on its own stream. Returns the results in order."""
    mats = [t.reshape(t.shape[0], t.shape[1], -1) for t in tensors]
    out = [None] * len(mats)
    by_shape = {}
    for i, m in enumerate(mats):
        by_shape.setdefault((tuple(m.shape[1:]), m.dtype, m.device), []).append(i)
    calls = [[idx[k] for k in call]
             for idx in by_shape.values() for call in _calls([mats[i].shape[0] for i in idx])]

    def run(members):
        if len(members) == 1:
            parts = [newton_schulz(part, steps, dtype) for part in mats[members[0]].split(MAX_BATCH)]
            return [parts[0] if len(parts) == 1 else torch.cat(parts)]
        return newton_schulz(torch.cat([mats[i] for i in members]), steps, dtype).split(
            [mats[i].shape[0] for i in members])

    # Side by side: each call is a chain of small kernels that leaves most of the GPU idle, and the calls
    # of different shapes are independent (H100: m3's step 967 -> 871 us at 20 seeds, bit-identical).
    for members, results in zip(calls, side_by_side(run, calls, mats[0].device, mats)):
        for i, result in zip(members, results):
            out[i] = result
    return [o.reshape(t.shape) for o, t in zip(out, tensors)]
