"""Round-to-nearest baseline on the same grid and scales (no error propagation)."""
from __future__ import annotations

import torch


def rtn_quantize(W: torch.Tensor, S: torch.Tensor, grid):
    """W (N, K), S (N, K) per-coordinate scales → (z int32, q, outlier bool), each (N, K)."""
    return grid.round(W, S.to(W.dtype))
