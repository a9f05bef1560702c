"""Torch reference for SSQR (docs/format.md §2): dense dequantization and y = x Wᵀ (+ b)."""
from __future__ import annotations

import torch

from babai_kernels.common import check_tensor
from babai_kernels.ssqr.pack import unpack_ssqr

ACT_DTYPES = (torch.float16, torch.bfloat16, torch.float32)


def dequantize_ssqr(tensors: dict[str, torch.Tensor]) -> torch.Tensor:
    """Dense weight (N, K) float32 in ORIGINAL column order.

    Wq_stored[n, j] = scales[j // G, n] * z[n, j] + O[n, j];  Wq[n, perm[j]] = Wq_stored[n, j].
    Exact: a float16 scale times a code of at most 4 bits fits float32's mantissa.
    """
    z, scales, perm, outliers = unpack_ssqr(tensors)
    group = z.shape[1] // scales.shape[1]
    stored = scales.float().repeat_interleave(group, dim=1) * z.float() + outliers.float()
    weight = torch.empty_like(stored)
    weight[:, perm.long()] = stored
    return weight


def ssqr_linear_reference(x: torch.Tensor, tensors: dict[str, torch.Tensor],
                          bias: torch.Tensor | None = None) -> torch.Tensor:
    """y = x Wqᵀ (+ bias) for x (..., K) float16/bfloat16/float32; float32 accumulation, y in x.dtype."""
    weight = dequantize_ssqr(tensors)
    n, k = weight.shape
    check_tensor("x", x, dtype=ACT_DTYPES)
    if x.dim() < 1 or x.shape[-1] != k:
        raise ValueError(f"x: last dim must be K={k}, got shape {tuple(x.shape)}")
    y = x.float() @ weight.to(x.device).T
    if bias is not None:
        check_tensor("bias", bias, shape=(n,), device=x.device)
        y = y + bias.float()
    return y.to(x.dtype)
