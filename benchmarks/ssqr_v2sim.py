"""Simulation of a proposed SSQR format v2 (issue 15): outliers stored as int8 lattice codes.

v1 stores each outlier as a float16 value of the propagated weight w̃ plus an int16 column (32
bits, ELL-padded to the longest row). v2 would store the outlier's integer round(w̃/s) at its group
scale as an int8 code (|z| ≤ 127, beyond the b-bit inlier range) plus an 8-bit column delta within
the row: 16 bits. Babai's rounding then continues on the outlier, so the whole row keeps the
unclipped bound ¼ Σ D s². The simulation runs the unchanged SSQR search with that rounding rule
(`simulated_v2`) and counts the bits a v2 checkpoint would store (`v2_bits`: the v1 count minus 16
bits per ELL slot; column deltas over 255, which would need a filler entry, are not counted).
"""
from __future__ import annotations

import contextlib

import torch

from babai_quantizer.formats import ssqr as ssqr_module
from babai_quantizer.lattice.grids import OverflowGrid

V2_SAVED_BITS_PER_SLOT = 16


class Int8OverflowGrid(OverflowGrid):
    """round(w̃/s) outside the b-bit range makes w̃ an outlier with value clamp(z, ±127)·s (code 0
    in the inlier tensor, as in v1)."""

    def round(self, w: torch.Tensor, s: torch.Tensor):
        r = torch.round(w / s)
        outlier = (r < self.lo) | (r > self.hi)
        z = torch.where(outlier, torch.zeros_like(r), r)
        q = torch.where(outlier, r.clamp(-127, 127) * s, z * s)
        return z.to(torch.int32), q, outlier


@contextlib.contextmanager
def simulated_v2(enabled: bool = True):
    """Within the block, formats/ssqr.py rounds outliers to int8 codes (Int8OverflowGrid)."""
    if enabled:
        ssqr_module.OverflowGrid = Int8OverflowGrid
    try:
        yield
    finally:
        ssqr_module.OverflowGrid = OverflowGrid


def v2_bits(tensors: dict[str, torch.Tensor], n: int, k: int, v1_bits: float) -> float:
    """Bits/weight of one (N, K) SSQR linear stored as v2, from its v1 tensors and v1 bits."""
    return v1_bits - V2_SAVED_BITS_PER_SLOT * tensors["outlier_cols"].numel() / (n * k)
