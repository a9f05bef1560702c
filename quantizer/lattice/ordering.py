"""Quantization orders and the LDL diagonal D they induce.

Convention everywhere: `perm[k]` is the original column that GPTQ quantizes k-th (perm[0] first).
Babai's basis order is T = reverse(perm) (Babai loops last → first, so it handles perm[0] first too).
"""
from __future__ import annotations

import torch

METHODS = ("identity", "act", "min-pivot")


def ordering(H: torch.Tensor, method: str = "act", *, panel: int = 64) -> torch.Tensor:
    """GPTQ loop order (K,) int64 for the (damped) Hessian H (K, K).

    identity: 0..K-1. act: descending diag H (GPTQ act-order). min-pivot: paper Alg. 3 — greedy
    diagonal-pivoted LDL that always eliminates the smallest current Schur diagonal; that gives
    Babai's order T, and the GPTQ order is reverse(T). `panel` only affects speed (blocked form).
    """
    K = H.shape[0]
    if method == "identity":
        return torch.arange(K, device=H.device)
    if method == "act":
        return torch.argsort(torch.diagonal(H), descending=True, stable=True)
    if method == "min-pivot":
        return min_pivot_babai_order(H, panel=panel).flip(0)
    raise ValueError(f"ordering: unknown method {method!r}, expected one of {METHODS}")


def min_pivot_babai_order(H: torch.Tensor, *, panel: int = 64) -> torch.Tensor:
    """Babai order T (K,) of Alg. 3, blocked like LAPACK's pivoted Cholesky (fp64).

    Within a panel each pivot column is formed lazily from the Schur complement at the panel
    start minus the panel's own rank-1 terms; the trailing matrix is updated once per panel.
    Equal to the plain loop `reference.min_pivot_order_reference` (tested).
    """
    A = H.to(torch.float64).clone()
    K = A.shape[0]
    d = torch.diagonal(A).clone()                 # current Schur-complement diagonal
    taken = torch.zeros(K, dtype=torch.bool, device=A.device)
    order = torch.empty(K, dtype=torch.int64, device=A.device)
    inf = torch.tensor(float("inf"), dtype=A.dtype, device=A.device)
    for t0 in range(0, K, panel):
        b = min(panel, K - t0)
        Lp = torch.zeros(K, b, dtype=A.dtype, device=A.device)   # unit-lower LDL columns
        Dp = torch.zeros(b, dtype=A.dtype, device=A.device)
        for i in range(b):
            p = int(torch.argmin(torch.where(taken, inf, d)))
            col = A[:, p] - Lp[:, :i] @ (Dp[:i] * Lp[p, :i])
            Dp[i] = col[p]
            Lp[:, i] = col / col[p]
            d -= Lp[:, i] * col
            taken[p] = True
            order[t0 + i] = p
        A -= (Lp * Dp) @ Lp.T
    return order


def block_local_ordering(H: torch.Tensor, method: str, parts: int) -> torch.Tensor:
    """GPTQ order (K,) int64 whose `parts` contiguous blocks are each permuted within themselves.

    H: (K, K) damped Hessian. Block p (columns [pK/P, (p+1)K/P)) is ordered by `method` on its
    own diagonal block of H, and the blocks are quantized in turn (block 0 first), so
    perm[j] ∈ block p for every stored j ∈ block p (docs/format.md §2, row-parallel split).
    parts=1 is the plain ordering of H.
    """
    if method not in METHODS:
        raise ValueError(f"ordering: unknown method {method!r}, expected one of {METHODS}")
    K = H.shape[0]
    width = K // parts
    return torch.cat([ordering(H[b:b + width, b:b + width], method) + b for b in range(0, K, width)])


def ldl_diagonal(H: torch.Tensor, perm: torch.Tensor) -> torch.Tensor:
    """D (K,) in quantization order: D_k = 1/[(H_{F_k})⁻¹]_{kk}, F_k = {perm[k], …, perm[K-1]}.

    Equivalently the LDL diagonal of the Babai-ordered Hessian TᵀHT (T = reverse(perm)),
    read back to front. Computed in the dtype of H.
    """
    H_T = H[perm.flip(0)][:, perm.flip(0)]
    L = torch.linalg.cholesky(H_T)
    return torch.diagonal(L).square().flip(0)


def trace_D(H: torch.Tensor, perm: torch.Tensor) -> float:
    """tr(D) for the GPTQ order `perm`: the Babai bound with unit scales, times 4."""
    return float(ldl_diagonal(H, perm).sum())
