"""Triton fused HPTQ decode-GEMV for small M: y = x · Wqᵀ without materializing Wq.

Design (see kernels/hptq/prepare.py for the layout): one lane per chunk (row n, columns
[cC, (c+1)C)) decodes its C codes in registers with `decode_symbol` and accumulates
Σ_i z_i · x[m, cC + i] for every m < M (a BLOCK × BLOCK_M fp32 tile). Each lane writes its
partial sum to `partial[m, chunk]`; torch then sums the K/C partials of each row and applies
the one matrix scale (deterministic, no atomics). Weight traffic is the compressed stream
only (~3 bits/weight), x is re-read from cache.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from babai_kernels.hptq.decode import decode_symbol
from babai_kernels.hptq.prepare import PreparedHPTQ

GEMV_BLOCK = 32
GEMV_MAX_M = 8


@triton.jit
def _hptq_gemv_kernel(x_ptr, stream_ptr, last_word, starts_ptr, lut_value_ptr, lut_info_ptr,
                      partial_ptr, M, n_chunks, chunks_per_row, chunk_cols, in_features,
                      BLOCK: tl.constexpr, BLOCK_M: tl.constexpr):
    chunk = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    live = chunk < n_chunks
    ms = tl.arange(0, BLOCK_M)
    x_mask = live[:, None] & (ms < M)[None, :]
    pos = tl.load(starts_ptr + chunk, mask=live, other=0)
    col = (chunk % chunks_per_row).to(tl.int64) * chunk_cols
    x_row = x_ptr + ms.to(tl.int64)[None, :] * in_features + col[:, None]
    acc = tl.zeros((BLOCK, BLOCK_M), dtype=tl.float32)
    for i in range(chunk_cols):
        value, pos = decode_symbol(stream_ptr, last_word, lut_value_ptr, lut_info_ptr, pos)
        xv = tl.load(x_row + i, mask=x_mask, other=0.0).to(tl.float32)
        acc += value.to(tl.float32)[:, None] * xv
    tl.store(partial_ptr + ms.to(tl.int64)[None, :] * n_chunks + chunk[:, None], acc, mask=x_mask)


def hptq_gemv(x: torch.Tensor, prepared: PreparedHPTQ) -> torch.Tensor:
    """x (M, K) contiguous, M ≤ GEMV_MAX_M, on the layer's device → (M, N) float32 = x · Wqᵀ."""
    p = prepared
    m = x.shape[0]
    if not 1 <= m <= GEMV_MAX_M:
        raise ValueError(f"x: fused GEMV takes 1..{GEMV_MAX_M} rows, got {m}")
    n_chunks = p.chunk_starts.numel()
    partial = torch.empty(m, n_chunks, dtype=torch.float32, device=x.device)
    _hptq_gemv_kernel[(triton.cdiv(n_chunks, GEMV_BLOCK),)](
        x, p.stream, p.stream.numel() - 2, p.chunk_starts, p.lut_value, p.lut_info, partial,
        m, n_chunks, p.in_features // p.chunk_cols, p.chunk_cols, p.in_features,
        BLOCK=GEMV_BLOCK, BLOCK_M=triton.next_power_of_2(m))
    return partial.view(m, p.out_features, -1).sum(-1) * p.scale
