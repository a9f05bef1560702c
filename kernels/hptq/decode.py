"""Triton parallel Huffman decode of an HPTQ layer into codes or dequantized weights.

Design: see kernels/hptq/prepare.py. One lane per chunk decodes its C symbols with one LUT
lookup each (`decode_symbol`, shared with the fused GEMV) and stores them; for large M the
layer is decoded to a dense weight once per call and multiplied with torch (tensor cores).
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from babai_kernels.hptq.prepare import PreparedHPTQ

DECODE_BLOCK = 64


@triton.jit
def decode_symbol(stream_ptr, last_word, lut_value_ptr, lut_info_ptr, pos):
    """Decode the symbol at bit `pos` (int64 per lane) → (value int32, next pos int64).

    Reads words clamp(pos // 32, 0, last_word) and the one after; `stream_ptr` has
    last_word + 2 words, so every read is in bounds whatever `pos` is.
    """
    word = tl.minimum(tl.maximum(pos >> 5, 0), last_word)
    bit = pos & 31
    hi = tl.load(stream_ptr + word).to(tl.uint32, bitcast=True).to(tl.int64)
    lo = tl.load(stream_ptr + word + 1).to(tl.uint32, bitcast=True).to(tl.int64)
    peek = (hi << bit) | (lo >> (32 - bit))          # stream bits [pos, pos + 32) at bits 31..0
    slot = (peek >> 20) & 4095
    value = tl.load(lut_value_ptr + slot)
    info = tl.load(lut_info_ptr + slot).to(tl.int64)
    length = info & 31
    escape = (info >> 5) & 1
    raw = (peek >> (16 - length)) & 0xFFFF
    escaped = (raw - ((raw & 0x8000) << 1)).to(tl.int32)
    value = tl.where(escape != 0, escaped, value)
    return value, pos + length + escape * 16


@triton.jit
def _hptq_decode_kernel(stream_ptr, last_word, starts_ptr, lut_value_ptr, lut_info_ptr, out_ptr,
                        scale, n_chunks, chunks_per_row, chunk_cols, in_features,
                        BLOCK: tl.constexpr, DEQUANTIZE: tl.constexpr):
    chunk = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    live = chunk < n_chunks
    pos = tl.load(starts_ptr + chunk, mask=live, other=0)
    row = (chunk // chunks_per_row).to(tl.int64)
    col = (chunk % chunks_per_row).to(tl.int64) * chunk_cols
    dst = out_ptr + row * in_features + col
    for i in range(chunk_cols):
        value, pos = decode_symbol(stream_ptr, last_word, lut_value_ptr, lut_info_ptr, pos)
        if DEQUANTIZE:
            tl.store(dst + i, (value.to(tl.float32) * scale).to(out_ptr.dtype.element_ty), mask=live)
        else:
            tl.store(dst + i, value, mask=live)


def hptq_decode(prepared: PreparedHPTQ, dtype: torch.dtype = torch.int32) -> torch.Tensor:
    """Decode the layer on its device → (N, K): int32 codes z for dtype int32, else the
    dequantized weight scale · z in `dtype` (float16 / bfloat16 / float32)."""
    if dtype not in (torch.int32, torch.float16, torch.bfloat16, torch.float32):
        raise ValueError(f"dtype: {dtype} not in int32, float16, bfloat16, float32")
    p = prepared
    out = torch.empty(p.out_features, p.in_features, dtype=dtype, device=p.device)
    n_chunks = p.chunk_starts.numel()
    _hptq_decode_kernel[(triton.cdiv(n_chunks, DECODE_BLOCK),)](
        p.stream, p.stream.numel() - 2, p.chunk_starts, p.lut_value, p.lut_info, out,
        p.scale, n_chunks, p.in_features // p.chunk_cols, p.chunk_cols, p.in_features,
        BLOCK=DECODE_BLOCK, DEQUANTIZE=dtype != torch.int32)
    return out
