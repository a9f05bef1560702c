"""Static scales for a symmetric signed b-bit grid {−2^(b−1), …, 2^(b−1)−1}, computed once
before the sweep (paper §1: S is fixed before any weight update).

Scales are per (row, group): groups are G consecutive columns *in a given column order*
(`order`), so callers can group in quantization order (SSQR: stored order) or in the original
order (standard GPTQ checkpoints). group_size=None means one scale for the whole matrix (HPTQ).
"""
from __future__ import annotations

import torch


def grid_range(bits: int) -> tuple[int, int]:
    """(lo, hi) of the signed b-bit grid."""
    return -(1 << (bits - 1)), (1 << (bits - 1)) - 1


def _grouped(W: torch.Tensor, group_size: int | None, order: torch.Tensor | None) -> torch.Tensor:
    """(N, n_groups, G) view of W's columns taken in `order` (whole matrix as one group if G is None)."""
    if order is not None:
        W = W[:, order]
    if group_size is None:
        return W.reshape(1, 1, -1)
    return W.reshape(W.shape[0], -1, group_size)


def absmax_scale(absmax: torch.Tensor, bits: int) -> torch.Tensor:
    """GPTQ's symmetric convention: s = 2·absmax/(2^b − 1), i.e. absmax sits at code 2^(b−1) − ½."""
    return absmax * (2.0 / ((1 << bits) - 1))


def group_scales(W: torch.Tensor, bits: int, group_size: int | None, *,
                 order: torch.Tensor | None = None, method: str = "mse", fp16: bool = True,
                 maxshrink: float = 0.8, grid: int = 100, norm: float = 2.4,
                 row_chunk: int = 1024) -> torch.Tensor:
    """Scales (N, K/G) float32 (or (N, 1) all equal when group_size is None).

    W: (N, K) float. order: (K,) column order in which groups are formed (None: original).
    method 'absmax': s = 2·max|w|/(2^b − 1) per group. method 'mse': GPTQ's
    find_params(mse=True) — try absmax shrunk by p = 1, 1 − 1/grid, … (> 1 − maxshrink) and keep
    the p minimising Σ|clamp(round(w/s))·s − w|^norm per group.
    fp16: round scales to float16 values (kept as float32) so a 16-bit checkpoint dequantizes
    exactly; scales are floored at the smallest normal float16 (float32) to stay nonzero.
    """
    if method not in ("mse", "absmax"):
        raise ValueError(f"scale_method: unknown method {method!r}, expected 'mse' or 'absmax'")
    N = W.shape[0]
    Wg = _grouped(W.to(torch.float32), group_size, order)
    lo, hi = grid_range(bits)
    chunks = []
    for r0 in range(0, Wg.shape[0], row_chunk):
        x = Wg[r0:r0 + row_chunk]
        amax = x.abs().amax(dim=-1)
        best_s = absmax_scale(amax, bits)
        if method == "mse":
            best_err = torch.full_like(amax, float("inf"))
            for i in range(int(maxshrink * grid)):
                s = absmax_scale(amax * (1 - i / grid), bits).clamp_min(torch.finfo(torch.float32).tiny)
                q = torch.clamp(torch.round(x / s[..., None]), lo, hi) * s[..., None]
                err = (q - x).abs().pow(norm).sum(-1)
                better = err < best_err
                best_err = torch.where(better, err, best_err)
                best_s = torch.where(better, s, best_s)
        chunks.append(best_s)
    s = torch.cat(chunks, 0)
    if fp16:
        s = s.to(torch.float16).to(torch.float32).clamp_min(torch.finfo(torch.float16).tiny)
    else:
        s = s.clamp_min(torch.finfo(torch.float32).tiny)
    return s.expand(N, -1).contiguous() if group_size is None else s


def step_group_index(perm: torch.Tensor, group_size: int | None, groups_in: str) -> torch.Tensor:
    """(K,) int64: the scale column used at quantization step k.

    groups_in 'quant_order': step k is in group k // G. 'original': step k quantizes original
    column perm[k], which is in group perm[k] // G. group_size None: always column 0.
    """
    K = perm.numel()
    if group_size is None:
        return torch.zeros(K, dtype=torch.int64, device=perm.device)
    if groups_in == "quant_order":
        return torch.arange(K, device=perm.device) // group_size
    if groups_in == "original":
        return perm // group_size
    raise ValueError(f"groups_in: expected 'quant_order' or 'original', got {groups_in!r}")


def coordinate_scales(scales: torch.Tensor, perm: torch.Tensor, group_index: torch.Tensor) -> torch.Tensor:
    """Per-coordinate scales (N, K) in ORIGINAL column order (the paper's S, transposed)."""
    S = torch.empty(scales.shape[0], perm.numel(), dtype=scales.dtype, device=scales.device)
    S[:, perm] = scales[:, group_index]
    return S
