"""Triton tile helpers shared by the SSQR GEMV and GEMM kernels.

Conventions (see kernels/ssqr/gemv.py for the overall design):
- `qweight` is (K*b/32, N) int32, row stride N: a load of one word row is coalesced along N.
- A K tile `offs_k` never straddles a scale group (the launcher makes BLOCK_K divide G), so the
  codes are multiplied with x exactly in integer-valued floats and the group scale is applied
  once per (K tile, column) to the partial sums.
"""
from __future__ import annotations

import triton
import triton.language as tl

from babai_kernels.ssqr.outliers import outlier_tile


@triton.jit
def load_codes(qw_ptr, N, offs_k, offs_n, mask_k, mask_n, BITS: tl.constexpr):
    """Signed codes z (BLOCK_K, BLOCK_N) int32 of stored columns offs_k, rows offs_n (§2 packing)."""
    block = offs_k // 32
    col = offs_k % 32
    mask = mask_k[:, None] & mask_n[None, :]
    if BITS == 3:
        low_row = block * 3 + col // 16
        low = tl.load(qw_ptr + low_row[:, None] * N + offs_n[None, :], mask=mask, other=0)
        high = tl.load(qw_ptr + (block * 3 + 2)[:, None] * N + offs_n[None, :], mask=mask, other=0)
        u = ((low >> (2 * (col % 16))[:, None]) & 3) | (((high >> col[:, None]) & 1) << 2)
    else:
        per_word: tl.constexpr = 32 // BITS
        row = block * BITS + col // per_word
        word = tl.load(qw_ptr + row[:, None] * N + offs_n[None, :], mask=mask, other=0)
        u = (word >> (BITS * (col % per_word))[:, None]) & ((1 << BITS) - 1)
    return u - (1 << (BITS - 1))


@triton.jit
def load_x_tile(x_ptr, stride_xm, perm_ptr, offs_m, offs_k, mask_m, mask_k, HAS_PERM: tl.constexpr):
    """x[offs_m, perm[offs_k]] (BLOCK_M, BLOCK_K) in x's dtype; 0 outside the matrix."""
    if HAS_PERM:
        cols = tl.load(perm_ptr + offs_k, mask=mask_k, other=0)
    else:
        cols = offs_k
    ptrs = x_ptr + offs_m.to(tl.int64)[:, None] * stride_xm + cols[None, :]
    return tl.load(ptrs, mask=mask_m[:, None] & mask_k[None, :], other=0.0)


@triton.jit
def load_scale(sc_ptr, N, k_start, group_size, offs_n, mask_n):
    """Scales (BLOCK_N,) float32 of the group holding stored column k_start."""
    return tl.load(sc_ptr + (k_start // group_size) * N + offs_n, mask=mask_n, other=0.0).to(tl.float32)


@triton.jit
def finish_tile(acc, is_first, x_ptr, stride_xm, osrc_ptr, oval_ptr, cap, bias_ptr, out_ptr,
                stride_om, N, offs_m, offs_n, mask_m, mask_n, BLOCK_M: tl.constexpr,
                BLOCK_N: tl.constexpr, FUSE_OUTLIERS: tl.constexpr, HAS_BIAS: tl.constexpr,
                ATOMIC: tl.constexpr):
    """Add outliers and bias (only in the first split-K part), then store or atomically add.

    ATOMIC: out is a zeroed float32 buffer that split-K parts (and the companion outlier kernel)
    add into; otherwise out has x's dtype and this tile is its only writer.
    """
    if FUSE_OUTLIERS:
        acc += outlier_tile(x_ptr, stride_xm, osrc_ptr, oval_ptr, tl.where(is_first, cap, 0), N,
                            offs_m, offs_n, mask_m, mask_n, BLOCK_M, BLOCK_N)
    if HAS_BIAS:
        bias = tl.load(bias_ptr + offs_n, mask=mask_n, other=0.0).to(tl.float32)
        acc += tl.where(is_first, bias, 0.0)[None, :]
    ptrs = out_ptr + offs_m.to(tl.int64)[:, None] * stride_om + offs_n[None, :]
    mask = mask_m[:, None] & mask_n[None, :]
    if ATOMIC:
        tl.atomic_add(ptrs, acc, mask=mask)
    else:
        tl.store(ptrs, acc.to(out_ptr.dtype.element_ty), mask=mask)


def kernel_args(x, p, bias, out, fuse_outliers: bool, atomic: bool) -> tuple[tuple, dict]:
    """Positional arguments and shared constexprs of the GEMV/GEMM kernels (launch helpers)."""
    m, n = out.shape
    args = (x, x.stride(0), p.qweight, p.scales, p.perm, p.outlier_src, p.outlier_vals, p.cap,
            bias if bias is not None else p.scales, out, out.stride(0), m, n, p.k, p.group_size)
    consts = dict(BITS=p.bits, HAS_PERM=p.has_perm, FUSE_OUTLIERS=fuse_outliers,
                  HAS_BIAS=bias is not None, ATOMIC=atomic)
    return args, consts
