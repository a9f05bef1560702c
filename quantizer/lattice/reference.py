"""Float64 reference algorithms, written to read like the papers' pseudocode.

All take W (N, K) (rows = output channels), an already damped Hessian H (K, K), per-coordinate
scales S (N, K) in original column order, a grid (grids.py) and an order; they return
(z int32, q float64, outlier bool), each (N, K) in original column order.
"""
from __future__ import annotations

import torch


def gptq_reference(W, H, S, grid, perm):
    """GPTQ front-to-back (Frantar et al. Alg. 1 / paper Alg. 1, block size ∞).

    H_P = PᵀHP; U = chol(H_P⁻¹) upper (H_P⁻¹ = UᵀU); for j = 0..K-1 (the column perm[j]):
    z_j = ROUND(w̃_j / s_j), ε = (w̃_j − q_j)/U_jj, w̃_{j+1:} −= ε·U_{j, j+1:}
    (i.e. W[j:] += L[j:, j](q_j − w̃_j) with L the unit-lower LDL factor of H_P⁻¹).
    """
    W, H, S = W.double(), H.double(), S.double()
    HP = H[perm][:, perm]
    U = torch.linalg.cholesky(torch.linalg.inv(HP), upper=True)
    Wt, SP = W[:, perm].clone(), S[:, perm]
    Z = torch.empty_like(Wt, dtype=torch.int32)
    Q, O = torch.empty_like(Wt), torch.empty_like(Wt, dtype=torch.bool)
    for j in range(Wt.shape[1]):
        Z[:, j], Q[:, j], O[:, j] = grid.round(Wt[:, j], SP[:, j])
        err = (Wt[:, j] - Q[:, j]) / U[j, j]
        Wt[:, j + 1:] -= err[:, None] * U[j, j + 1:][None, :]
    return _unpermute(Z, Q, O, perm)


def babai_reference(W, H, S, grid, order):
    """Babai's nearest plane, inverse-free Cholesky form (paper §4 [K], WUSH `babai_inner`).

    `order` = Babai basis order T (T[0] is the first basis vector). H_T = TᵀHT = RᵀR (R upper),
    target y = R w per row. For j = K-1 … 0: x_j = y_j / R_jj (the coordinate along the j-th
    Gram–Schmidt direction), z_j = ROUND(x_j / s_j), y_{:j} −= q_j · R_{:j, j}.
    """
    W, H, S = W.double(), H.double(), S.double()
    HT = H[order][:, order]
    R = torch.linalg.cholesky(HT, upper=True)
    WT, ST = W[:, order], S[:, order]
    Y = WT @ R.T                                    # row n: y = R w_n
    Z = torch.empty_like(WT, dtype=torch.int32)
    Q, O = torch.empty_like(WT), torch.empty_like(WT, dtype=torch.bool)
    for j in range(WT.shape[1] - 1, -1, -1):
        x = Y[:, j] / R[j, j]
        Z[:, j], Q[:, j], O[:, j] = grid.round(x, ST[:, j])
        Y[:, :j] -= Q[:, j][:, None] * R[:j, j][None, :]
    return _unpermute(Z, Q, O, order)


def babai_reduced_reference(W, H, scale, order, T):
    """Babai's nearest plane on a reduced basis, paper Alg. 2 as written, for one scale s (HPTQ).

    B = s·R with H_T = H[order][:, order] = RᵀR (R upper; columns = basis vectors), reduced basis
    A = B·T (T (K, K) unimodular), Φ = QR(A).Q. Per row: y = R w (w in Babai order); for j = K-1 … 0:
    ζ = ⟨Φ_j, y⟩ / ⟨Φ_j, A_j⟩, z'_j = ROUND(ζ), y −= A_j z'_j; then z = T z' (unbounded grid).
    Returns (z (N, K) int64 in original column order, z' (N, K) int64 in reduced coordinates).
    """
    W, H, T = W.double(), H.double(), T.double()
    R = torch.linalg.cholesky(H[order][:, order], upper=True)
    A = scale * R @ T
    Phi = torch.linalg.qr(A).Q
    Y = W[:, order] @ R.T                           # row n: y = R w_n
    Zr = torch.empty_like(Y, dtype=torch.int64)
    for j in range(A.shape[1] - 1, -1, -1):
        Zr[:, j] = torch.round((Y @ Phi[:, j]) / (Phi[:, j] @ A[:, j])).to(torch.int64)
        Y -= Zr[:, j].double()[:, None] * A[:, j][None, :]
    z = torch.empty_like(Zr)
    z[:, order] = Zr @ T.to(torch.int64).T
    return z, Zr


def min_pivot_order_reference(H):
    """Paper Alg. 3 as written: repeatedly pick j' = argmin of the current diagonal over the
    remaining set J, take the rank-1 Schur complement H −= H[:, j']H[j', :]/H[j', j'], drop j'.
    Returns Babai's order T (K,) int64 (the GPTQ order is its reverse)."""
    A = H.double().clone()
    K = A.shape[0]
    remaining = torch.ones(K, dtype=torch.bool)
    T = []
    for _ in range(K):
        diag = torch.where(remaining, torch.diagonal(A), torch.tensor(float("inf"), dtype=A.dtype))
        p = int(torch.argmin(diag))
        A = A - torch.outer(A[:, p], A[p, :]) / A[p, p]
        remaining[p] = False
        T.append(p)
    return torch.tensor(T, dtype=torch.int64)


def _unpermute(Z, Q, O, perm):
    out = []
    for t in (Z, Q, O):
        u = torch.empty_like(t)
        u[:, perm] = t
        out.append(u)
    return tuple(out)
