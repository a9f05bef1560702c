"""SSQR outliers on the GPU: a fused tile helper and a small companion sparse kernel.

Layout prepared once by `prepare_ssqr` (kernels/ssqr/linear.py): `outlier_src` int32 (cap, N) holds
the ORIGINAL input column perm[outlier_cols[n, c]] of slot c of row n, `outlier_vals` float16
(cap, N) its value; padding slots are (perm[0], 0.0) and add nothing. Slot-major (cap, N) makes
each slot's load coalesced along N. One slot costs a gather of x (BLOCK_M, BLOCK_N); with 1 %
outliers cap ≈ 0.01·K, so the sparse part moves ~6 bytes per outlier against K·b/8 code bytes.

`outlier_tile` is called either inside the main kernels' epilogue (fused) or by
`_ssqr_outliers_kernel`, which adds into the float32 output of the main kernel (companion mode).
Which is faster is picked per shape by measurement (kernels/ssqr/tuning.py).
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl


@triton.jit
def outlier_tile(x_ptr, stride_xm, osrc_ptr, oval_ptr, n_slots, N, offs_m, offs_n, mask_m, mask_n,
                 BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    """Σ_c x[m, src[c, n]] · val[c, n] over slots c < n_slots, as (BLOCK_M, BLOCK_N) float32."""
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    mask = mask_m[:, None] & mask_n[None, :]
    x_rows = x_ptr + offs_m.to(tl.int64)[:, None] * stride_xm
    for c in range(0, n_slots):
        src = tl.load(osrc_ptr + c * N + offs_n, mask=mask_n, other=0)
        val = tl.load(oval_ptr + c * N + offs_n, mask=mask_n, other=0.0).to(tl.float32)
        xv = tl.load(x_rows + src[None, :], mask=mask, other=0.0).to(tl.float32)
        acc += xv * val[None, :]
    return acc


@triton.jit
def _ssqr_outliers_kernel(x_ptr, stride_xm, osrc_ptr, oval_ptr, cap, out_ptr, stride_om, M, N,
                          BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    offs_n = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_m = tl.program_id(1) * BLOCK_M + tl.arange(0, BLOCK_M)
    mask_m, mask_n = offs_m < M, offs_n < N
    acc = outlier_tile(x_ptr, stride_xm, osrc_ptr, oval_ptr, cap, N, offs_m, offs_n, mask_m, mask_n,
                       BLOCK_M, BLOCK_N)
    ptrs = out_ptr + offs_m.to(tl.int64)[:, None] * stride_om + offs_n[None, :]
    mask = mask_m[:, None] & mask_n[None, :]
    tl.store(ptrs, tl.load(ptrs, mask=mask, other=0.0) + acc, mask=mask)


def add_outliers(x: torch.Tensor, outlier_src: torch.Tensor, outlier_vals: torch.Tensor,
                 out: torch.Tensor, block_m: int = 16, block_n: int = 64) -> None:
    """out (M, N) float32 += outliers · x for x (M, K) contiguous (companion kernel, in place)."""
    m, n = out.shape
    grid = (triton.cdiv(n, block_n), triton.cdiv(m, block_m))
    _ssqr_outliers_kernel[grid](x, x.stride(0), outlier_src, outlier_vals, outlier_src.shape[0],
                                out, out.stride(0), m, n, BLOCK_M=block_m, BLOCK_N=block_n)
