"""Newton-Schulz orthogonalisation, batched over the leading seed axis.

For a matrix G = U S V^T, returns approximately U V^T (every singular value mapped towards 1) using
the quintic iteration of Muon (Jordan et al. 2024):

    X_0 = G / ||G||_F                     (per seed, so every singular value is <= 1)
    X_{k+1} = a X_k + (b A_k + c A_k^2) X_k,   A_k = X_k X_k^T,   (a, b, c) = (3.4445, -4.7750, 2.0315)

The coefficients trade exactness for speed: after 5 steps the singular values land in roughly
[0.7, 1.2] rather than exactly at 1 (tiny ones, below ~1e-3 of the norm, stay small).
"""
import torch

NS_COEFFS = (3.4445, -4.7750, 2.0315)


def is_matrix(p):
    """A weight matrix of one network: seed axis + at least 2 dims (trailing dims are flattened)."""
    return p.ndim >= 3


def newton_schulz(G, steps=5, eps=1e-7):
    """Orthogonalise G [S, rows, cols] per seed (dim 0). Runs in float32; returns G's dtype."""
    a, b, c = NS_COEFFS
    X = G.float()
    tall = X.size(-2) > X.size(-1)
    if tall:  # iterate on the smaller Gram matrix X X^T
        X = X.mT
    X = X / (X.norm(dim=(-2, -1), keepdim=True) + eps)
    for _ in range(steps):
        A = X @ X.mT
        X = a * X + (b * A + c * A @ A) @ X
    if tall:
        X = X.mT
    return X.to(G.dtype)


def orthogonalise(M, steps):
    """newton_schulz on a parameter-shaped tensor [S, d1, d2, ...], viewed as [S, d1, d2*...]."""
    return newton_schulz(M.reshape(M.shape[0], M.shape[1], -1), steps).view_as(M)
