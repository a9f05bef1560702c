"""SSQR outliers inside the main kernel, consumed in vectorized slabs.

Layout prepared once by `prepare_ssqr`: `outlier_cols` int16 (cap, N) stored column of slot c of
row n, `outlier_vals` float16 (cap, N) its value (padding: column 0, value 0, adds nothing);
slot-major, so a slab of SLAB slots is one (SLAB, BLOCK_N) load coalesced along N. The kernel
reads x already permuted into stored order, so the stored column indexes it directly. With
split-K the slots are shared out among the split-K programs of a tile like the K range.
"""
from __future__ import annotations

import triton
import triton.language as tl


@triton.jit
def outlier_slabs(x_ptr, K, ocol_ptr, oval_ptr, lo, hi, N, offs_m, mask_m, offs_n, mask_n,
                  BLOCK_MO: tl.constexpr, BLOCK_N: tl.constexpr, SLAB: tl.constexpr):
    """Σ_c x[m, col[c, n]] · val[c, n] over slots lo ≤ c < hi → (BLOCK_MO, BLOCK_N) float32."""
    acc = tl.zeros((BLOCK_MO, BLOCK_N), dtype=tl.float32)
    x_rows = x_ptr + offs_m.to(tl.int64)[:, None, None] * K
    for c0 in range(lo, hi, SLAB):
        slots = c0 + tl.arange(0, SLAB)
        live = (slots < hi)[:, None] & mask_n[None, :]
        at = slots[:, None] * N + offs_n[None, :]
        col = tl.load(ocol_ptr + at, mask=live, other=0).to(tl.int32)
        val = tl.load(oval_ptr + at, mask=live, other=0.0).to(tl.float32)
        xv = tl.load(x_rows + col[None, :, :], mask=mask_m[:, None, None] & live[None, :, :],
                     other=0.0)
        acc += tl.sum(xv.to(tl.float32) * val[None, :, :], axis=1)
    return acc


@triton.jit
def spread_rows(t, BLOCK_M: tl.constexpr):
    """(BLOCK_MO, BLOCK_N) → (BLOCK_M, BLOCK_N), row r = t[r % BLOCK_MO] (BLOCK_MO divides BLOCK_M)."""
    BLOCK_MO: tl.constexpr = t.shape[0]
    BLOCK_N: tl.constexpr = t.shape[1]
    if BLOCK_MO == BLOCK_M:
        return t
    wide = tl.broadcast_to(t[None, :, :], (BLOCK_M // BLOCK_MO, BLOCK_MO, BLOCK_N))
    return tl.reshape(wide, (BLOCK_M, BLOCK_N))
