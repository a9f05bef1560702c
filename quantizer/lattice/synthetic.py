"""Synthetic single-layer problems for tests and benchmarks (no model weights needed)."""
from __future__ import annotations

import torch


def random_layer(N: int, K: int, *, samples: int | None = None, cond: float | None = None,
                 seed: int = 0, dtype: torch.dtype = torch.float64, device=None):
    """(W (N, K), X (samples, K), H = XᵀX (K, K)) with correlated, unevenly scaled inputs.

    cond: if given, X's singular values are log-spaced over [1/cond^½, 1] so H has condition
    number ≈ cond (an ill-conditioned lattice). Weights are Gaussian with a few heavy columns.
    """
    g = torch.Generator(device="cpu").manual_seed(seed)
    samples = samples or 4 * K
    if cond is None:
        mix = torch.randn(K, K, generator=g, dtype=torch.float64) / K ** 0.5 + torch.eye(K, dtype=torch.float64)
        col_scale = torch.exp(torch.randn(K, generator=g, dtype=torch.float64))
        X = torch.randn(samples, K, generator=g, dtype=torch.float64) @ mix * col_scale
    else:
        U, _ = torch.linalg.qr(torch.randn(samples, K, generator=g, dtype=torch.float64))
        V, _ = torch.linalg.qr(torch.randn(K, K, generator=g, dtype=torch.float64))
        sv = torch.logspace(0, -0.5 * torch.log10(torch.tensor(cond)).item(), K, dtype=torch.float64)
        X = (U * sv) @ V.T * samples ** 0.5
    W = torch.randn(N, K, generator=g, dtype=torch.float64) * 0.02
    W[:, torch.randint(0, K, (max(1, K // 16),), generator=g)] *= 5.0
    return W.to(device=device, dtype=dtype), X.to(device=device, dtype=dtype), (X.T @ X).to(device=device, dtype=dtype)
