"""The production sweep: GPTQ with lazy-batch blocks (IST-DASLab gptq.py style), all rows at once.

Front-to-back in the order of a PreparedHessian; by the GPTQ ≡ Babai equivalence this is Babai's
nearest plane run back-to-front on T = reverse(perm). Tested equal (integer codes) to
reference.gptq_reference / babai_reference.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from .hessian import cholesky_with_retry, fix_dead_inputs
from .ordering import ordering as make_ordering


@dataclass
class PreparedHessian:
    """Everything the sweep needs from H, computed once per layer (reusable across scale searches).

    H: (K, K) float64 damped Hessian (dead inputs fixed), original order.
    perm: (K,) int64 GPTQ order. U: (K, K) upper Cholesky factor of (PᵀHP)⁻¹ (UᵀU = H_P⁻¹).
    D: (K,) LDL diagonal in quantization order, D_k = 1/U_kk². dead: (K,) bool dead inputs.
    damping: relative damping actually used; lam: absolute λ added to the diagonal.
    """

    H: torch.Tensor
    perm: torch.Tensor
    U: torch.Tensor
    D: torch.Tensor
    dead: torch.Tensor
    damping: float
    lam: float

    @property
    def trace_D(self) -> float:
        return float(self.D.sum())


def inverse_cholesky_upper(HP: torch.Tensor) -> torch.Tensor:
    """U upper with UᵀU = HP⁻¹, without forming HP⁻¹: with J the reversal and
    J·HP·J = L' L'ᵀ (this is the Babai-ordered Hessian), U = J·L'⁻¹·J."""
    Lr = torch.linalg.cholesky(HP.flip(0, 1))
    eye = torch.eye(HP.shape[0], dtype=HP.dtype, device=HP.device)
    return torch.linalg.solve_triangular(Lr, eye, upper=False).flip(0, 1)


def prepare_hessian(H: torch.Tensor, *, ordering: str = "act", perm: torch.Tensor | None = None,
                    damping: float = 0.01, dtype: torch.dtype = torch.float32,
                    device: torch.device | str | None = None) -> PreparedHessian:
    """Fix dead inputs, damp (retrying with more damping on failure), order, factor.

    H: (K, K) symmetric PSD (symmetrized here), any float dtype. perm (K,) overrides `ordering`. The order is
    computed on the damped H in fp64; U is factored in `dtype` on `device`.
    """
    H = H.to(device=device or H.device, dtype=torch.float64)
    # Exactly symmetric: a float32 XᵀX is not, and Cholesky routines read one triangle only
    # (the GPTQ and Babai factorizations read opposite ones), so both must see the same matrix.
    H, dead = fix_dead_inputs((H + H.T) / 2)

    def factor(Hd):
        p = perm.to(Hd.device) if perm is not None else make_ordering(Hd, ordering)
        Hw = Hd.to(dtype)
        return p, inverse_cholesky_upper(Hw[p][:, p])

    (p, U), Hd, rel = cholesky_with_retry(H, damping, factor=factor)
    lam = float(rel * torch.diagonal(H).mean())
    return PreparedHessian(H=Hd, perm=p, U=U, D=torch.diagonal(U).square().reciprocal(),
                           dead=dead, damping=rel, lam=lam)


@dataclass
class SweepResult:
    """codes (N, K) int32, q (N, K) dequantized, outlier (N, K) bool — ORIGINAL column order.
    loss: (N,) Σ_k (w̃_k − q_k)² D_k, which equals (w − q)ᵀH(w − q) exactly in exact arithmetic."""

    codes: torch.Tensor
    q: torch.Tensor
    outlier: torch.Tensor
    loss: torch.Tensor


def sweep(W: torch.Tensor, prep: PreparedHessian, scales: torch.Tensor, group_index: torch.Tensor,
          grid, *, block_size: int = 128) -> SweepResult:
    """Blocked GPTQ sweep of W (N, K) in the order prep.perm.

    scales: (N, n_groups) scales; step k uses column group_index[k] (scales.step_group_index).
    grid: a grids.py rounding rule. Computes in prep.U's dtype on its device. Dead inputs must
    already be zero in W (api.quantize_layer does this).
    """
    dtype, dev = prep.U.dtype, prep.U.device
    perm, U = prep.perm, prep.U
    # Work on Wᵀ in quantization order, (K, N): a column of W is a contiguous row here.
    Wt = W.to(device=dev, dtype=dtype)[:, perm].T.contiguous()
    scales_t = scales.to(device=dev, dtype=dtype).T.contiguous()      # (n_groups, N)
    group_index = group_index.to(dev)
    K, N = Wt.shape
    Z = torch.empty(K, N, dtype=torch.int32, device=dev)
    Q = torch.empty(K, N, dtype=dtype, device=dev)
    O = torch.empty(K, N, dtype=torch.bool, device=dev)
    loss = torch.zeros(N, dtype=dtype, device=dev)
    for i1 in range(0, K, block_size):
        i2 = min(i1 + block_size, K)
        W1 = Wt[i1:i2]                          # view: updated in place
        U1 = U[i1:i2, i1:i2]
        Err1 = torch.empty_like(W1)
        for i in range(i2 - i1):
            w = W1[i]
            z, q, o = grid.round(w, scales_t[group_index[i1 + i]])
            Z[i1 + i], Q[i1 + i], O[i1 + i] = z, q, o
            err = (w - q) / U1[i, i]
            W1[i + 1:] -= U1[i, i + 1:, None] * err[None, :]
            Err1[i] = err
            loss += err.square()
        Wt[i2:] -= U[i1:i2, i2:].T @ Err1
    inv = torch.argsort(perm)
    return SweepResult(codes=Z[inv].T.contiguous(), q=Q[inv].T.contiguous(),
                       outlier=O[inv].T.contiguous(), loss=loss)
