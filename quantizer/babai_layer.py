"""Babai's nearest plane run back-to-front, at model scale (the driver's `--algorithm babai`).

GPTQ quantizes columns front-to-back in an order P; Babai's nearest plane on the basis order
T = reverse(P), run back-to-front, picks the same integers (arXiv 2507.18553 §4). This module
quantizes a linear layer that way, with GPTQ's scales and clipped grid, so the driver can show
the equivalence on a real model: `babai_blocked` is the blocked inverse-free Cholesky form of
babai_quantizer.lattice.reference.babai_reference (tested equal to it).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from babai_quantizer.lattice import (achieved_error, babai_bound, coordinate_scales, group_scales,
                               make_grid, prepare_hessian, step_group_index)
from babai_quantizer.lattice.api import sweep_target


def babai_blocked(W: torch.Tensor, H: torch.Tensor, S: torch.Tensor, grid, order: torch.Tensor,
                  *, block_size: int = 128):
    """Babai's nearest plane, inverse-free, processing `block_size` coordinates at a time.

    W (N, K) target weights, H (K, K) damped Hessian, S (N, K) per-coordinate scales (original
    column order), grid: a lattice grid, order (K,) Babai basis order T. Computes in W's dtype.
    H_T = RᵀR (R upper), y = R w per row; for j = K-1 … 0: x_j = y_j / R_jj,
    (z_j, q_j) = grid.round(x_j, s_j), y_{:j} −= q_j R_{:j, j}. Inside a block only the block's
    own columns of y are updated; the columns before it get one matrix product per block.
    Returns (z int32, q, outlier bool), each (N, K) in original column order.
    """
    dtype = W.dtype
    R = torch.linalg.cholesky(H.to(dtype)[order][:, order], upper=True)
    WT, ST = W[:, order], S.to(dtype)[:, order]
    Y = WT @ R.T
    N, K = WT.shape
    Z = torch.empty(N, K, dtype=torch.int32, device=W.device)
    Q = torch.empty_like(WT)
    O = torch.empty(N, K, dtype=torch.bool, device=W.device)
    for j1 in range(K, 0, -block_size):
        j0 = max(j1 - block_size, 0)
        for j in range(j1 - 1, j0 - 1, -1):
            x = Y[:, j] / R[j, j]
            Z[:, j], Q[:, j], O[:, j] = grid.round(x, ST[:, j])
            Y[:, j0:j] -= Q[:, j, None] * R[None, j0:j, j]
        Y[:, :j0] -= Q[:, j0:j1] @ R[:j0, j0:j1].T
    inv = torch.argsort(order)
    return Z[:, inv], Q[:, inv], O[:, inv]


@dataclass
class BabaiLayer:
    """One layer quantized by Babai back-to-front (tensors (N, K), original column order, CPU).

    codes int32, q float32 dequantized, scales (N, K/G) float32 (original-order groups, as
    GPTQ checkpoints store them), trace_D, error/bound (N,) float64 on the damped H. That the codes
    equal the GPTQ sweep's is checked by tests/test_babai_layer.py, not on every quantize.
    """

    codes: torch.Tensor
    q: torch.Tensor
    scales: torch.Tensor
    trace_D: float
    error: torch.Tensor
    bound: torch.Tensor


def quantize_layer_babai(W: torch.Tensor, H: torch.Tensor, *, bits: int, group_size: int,
                         ordering: str = "act", damping: float = 0.01, G_cross: torch.Tensor | None = None,
                         dtype: torch.dtype = torch.float64, device=None) -> BabaiLayer:
    """Quantize W (N, K) with H = XᵀX (K, K) exactly like the driver's GPTQ (clipped b-bit grid,
    MSE scales on original-order groups of `group_size`, GPTQ order P from `ordering`), but with
    Babai's nearest plane on T = reverse(P) in `dtype`."""
    prep = prepare_hessian(H, ordering=ordering, damping=damping, dtype=dtype, device=device)
    Wd = sweep_target(W, prep, G_cross)
    scales = group_scales(Wd, bits, group_size)
    gidx = step_group_index(prep.perm, group_size, "original")
    S = coordinate_scales(scales.to(Wd.device), prep.perm, gidx)
    grid = make_grid("clip", bits)
    codes, q, _ = babai_blocked(Wd.to(dtype), prep.H, S, grid, prep.perm.flip(0))
    return BabaiLayer(codes=codes.cpu(), q=q.to(torch.float32).cpu(), scales=scales.cpu(),
                      trace_D=prep.trace_D, error=achieved_error(Wd, q, prep.H).cpu(),
                      bound=babai_bound(S, prep.perm, prep.D).cpu())
