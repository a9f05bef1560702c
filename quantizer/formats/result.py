"""The common result of every format's quantize function (quantizer/formats/registry.py)."""
from __future__ import annotations

from dataclasses import dataclass, field

import torch

from babai_kernels.common import stored_bits


def effective_bits(tensors: dict[str, torch.Tensor], n_rows: int, n_cols: int) -> float:
    """Honest bits/weight: every stored byte of the layer's tensors × 8 / (N·K) (docs/format.md)."""
    return stored_bits(tensors) / (n_rows * n_cols)


@dataclass
class FormatResult:
    """One quantized linear layer in an on-disk format.

    tensors: the layer's tensors exactly as docs/format.md names them (CPU).
    q_dequant: (N, K) float32, the dequantized weight in original column order; equal bit for
        bit to the kernels' reference dequantizer applied to `tensors`.
    error: (N,) float64, ‖X(w − q)‖² = (w − q)ᵀ H (w − q) per row on the damped Hessian.
    bound: (N,) float64 Babai bound per row (SSQR: over the inlier coordinates; HPTQ: the
        unbounded-grid bound; NaN on rows SSQR stored clipped), or None where no bound
        applies (HRTN).
    effective_bits: stored bits / (N·K), everything counted.
    outlier_rate: (N,) float64 fraction of outliers per row (SSQR), else None.
    search: diagnostics of the search (steps, seconds, per-step measurements, trace_D, ...).
    clipped: True for the clipped GPTQ/RTN grid (Babai's bound does not apply to any row).
    """

    format: str
    tensors: dict[str, torch.Tensor]
    q_dequant: torch.Tensor
    error: torch.Tensor
    bound: torch.Tensor | None
    effective_bits: float
    outlier_rate: torch.Tensor | None = None
    search: dict = field(default_factory=dict)
    clipped: bool = False
