"""Babai's error bound (paper Thm. 5) and the achieved error, per output row."""
from __future__ import annotations

import torch


def babai_bound(S: torch.Tensor, perm: torch.Tensor, D: torch.Tensor,
                include: torch.Tensor | None = None) -> torch.Tensor:
    """(N,) float64: ¼ Σ_k D_k s_{n, perm[k]}², valid when nothing is clipped.

    S: (N, K) per-coordinate scales in original order; D: (K,) LDL diagonal in quantization
    order (ordering.ldl_diagonal / PreparedHessian.D). include: optional (N, K) bool mask in
    original order restricting the sum (e.g. SSQR inliers).
    """
    terms = S.double()[:, perm].square() * D.double().to(S.device)[None, :]
    if include is not None:
        terms = terms * include[:, perm]
    return 0.25 * terms.sum(1)


def achieved_error(W: torch.Tensor, Q: torch.Tensor, H: torch.Tensor) -> torch.Tensor:
    """(N,) float64: (w − q)ᵀ H (w − q) per row = ‖X(w − q)‖² (+ λ‖w − q‖² for a damped H)."""
    E = (W.double() - Q.double()).to(H.device)
    return ((E @ H.double()) * E).sum(1)
