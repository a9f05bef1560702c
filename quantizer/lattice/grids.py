"""Rounding rules applied to the propagated weights w̃ during the sweep.

Each grid maps w̃ and its scales s (same shape, any shape) to (z, q, outlier):
z int32 codes, q float dequantized values (dtype of w̃), outlier bool mask.
"""
from __future__ import annotations

import torch

from .scales import grid_range


class ClippedGrid:
    """GPTQ / RTN: z = clamp(round(w̃/s), −2^(b−1), 2^(b−1)−1), q = z·s."""

    def __init__(self, bits: int):
        self.bits = bits
        self.lo, self.hi = grid_range(bits)

    def round(self, w: torch.Tensor, s: torch.Tensor):
        z = torch.clamp(torch.round(w / s), self.lo, self.hi)
        return z.to(torch.int32), z * s, torch.zeros_like(w, dtype=torch.bool)


class UnboundedGrid:
    """HPTQ: z = round(w̃/s), any integer (Z† = Z), q = z·s."""

    bits = None

    def round(self, w: torch.Tensor, s: torch.Tensor):
        z = torch.round(w / s)
        return z.to(torch.int32), z * s, torch.zeros_like(w, dtype=torch.bool)


class OverflowGrid:
    """SSQR: round(w̃/s) outside the b-bit range makes w̃ an outlier: q = float16(w̃), code 0."""

    def __init__(self, bits: int):
        self.bits = bits
        self.lo, self.hi = grid_range(bits)

    def round(self, w: torch.Tensor, s: torch.Tensor):
        r = torch.round(w / s)
        outlier = (r < self.lo) | (r > self.hi)
        z = torch.where(outlier, torch.zeros_like(r), r)
        q = torch.where(outlier, w.to(torch.float16).to(w.dtype), z * s)
        return z.to(torch.int32), q, outlier


GRIDS = {"clip": ClippedGrid, "unbounded": UnboundedGrid, "overflow": OverflowGrid}


def make_grid(name: str, bits: int | None):
    """Grid object from its name: 'clip' | 'unbounded' | 'overflow'."""
    if name not in GRIDS:
        raise ValueError(f"grid: unknown grid {name!r}, expected one of {tuple(GRIDS)}")
    return UnboundedGrid() if name == "unbounded" else GRIDS[name](bits)
