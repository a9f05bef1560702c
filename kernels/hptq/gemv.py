"""Triton HPTQ kernel over lane streams (kernels/hptq/lanes.py): fused decode-GEMV, or decode.

Program: 32 consecutive rows × all 256-column spans of those rows, a (SPANS, 32) tensor of lanes
(lane = one row's span; a warp = 32 rows of one span, so x loads are warp-uniform broadcasts).
Each lane decodes its own stream from its bit position pos (int32, from `starts`):
  w0, w1 = stream words pos/32 and pos/32 + 1 (L1 hits) → peek = (w0:w1) << (pos mod 32) →
  entry = lut[peek >> 20] (16 KB table, L1-resident) → value = entry as float32, length =
  entry & 15; the same window serves a second symbol (≤ 31 + 24 bits in), so two symbols cost
  one pair of word loads.
Arithmetic is 32-bit, branch-free. GEMV mode: acc[span, row, m] += value · x[m, col]; at the end
the spans are summed, scaled, bias added and the 32 rows stored in x's dtype (one launch, no
partials). DECODE mode writes scale · z into a dense (N, K) weight instead (the large-M path:
decode, then a torch matmul). The stream ends with a zero look-ahead word: no read out of bounds.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from babai_kernels.common import triton_interpret
from babai_kernels.hptq.lanes import ROW_BLOCK, SPAN
from babai_kernels.hptq.prepare import PreparedHPTQ

GEMV_MAX_M = 8
NUM_WARPS = 4


@triton.jit
def _window(w0, w1, shift, USE_ASM: tl.constexpr):
    """Upper 32 bits of the 64-bit (w0:w1) << shift, shift in [0, 64) (int32 tensors, uint32 words)."""
    if USE_ASM:
        out = tl.inline_asm_elementwise(
            "{ .reg .b64 t; .reg .b32 lo; mov.b64 t, {$2, $1}; shl.b64 t, t, $3; mov.b64 {lo, $0}, t; }",
            "=r,r,r,r", [w0, w1, shift], dtype=tl.int32, is_pure=True, pack=1)
    else:
        wide = ((w0.to(tl.int64) & 0xFFFFFFFF) << 32) | (w1.to(tl.int64) & 0xFFFFFFFF)
        out = ((wide << shift) >> 32).to(tl.int32)
    return out


@triton.jit
def _two_symbols(lut_ptr, words_ptr, pos, USE_ASM: tl.constexpr):
    """Decode the two symbols at bit `pos` of each lane → (entry, entry, next pos).

    One window of two words holds both: the second symbol ends at most 31 + 2·12 = 55 bits in."""
    words = words_ptr + (pos >> 5)
    w0, w1 = tl.load(words), tl.load(words + 1)
    first = pos & 31
    entry0 = tl.load(lut_ptr + (_window(w0, w1, first, USE_ASM).to(tl.uint32, bitcast=True) >> 20))
    second = first + (entry0 & 15)
    entry1 = tl.load(lut_ptr + (_window(w0, w1, second, USE_ASM).to(tl.uint32, bitcast=True) >> 20))
    return entry0, entry1, pos + (entry0 & 15) + (entry1 & 15)


@triton.jit
def _use(entry, col, live, rows, acc, x_ptr, out_ptr, scale, M, N, K, BLOCK_M: tl.constexpr,
         EVEN_K: tl.constexpr, DECODE: tl.constexpr):
    """GEMV: acc += value · x[:, col]; DECODE: W[row, col] = scale · value. Returns acc."""
    ok = live & ((col < K) | EVEN_K)                         # (SPANS, 1)
    if DECODE:  # exact: clear the length bits
        value = (entry & -16).to(tl.float32, bitcast=True)
        dst = out_ptr + rows.to(tl.int64)[None, :] * K + col
        tl.store(dst, (value * scale).to(out_ptr.dtype.element_ty), mask=ok & (rows < N)[None, :])
    else:
        ms = tl.arange(0, BLOCK_M)
        xv = tl.load(x_ptr + ms[None, :] * K + col, mask=ok & (ms < M)[None, :], other=0.0)
        acc += entry.to(tl.float32, bitcast=True)[:, :, None] * xv.to(tl.float32)[:, None, :]
    return acc


@triton.jit
def _hptq_lanes_kernel(x_ptr, words_ptr, starts_ptr, lut_ptr, bias_ptr, out_ptr, scale, M, N, K,
                       spans, SPANS: tl.constexpr, BLOCK_M: tl.constexpr, EVEN_K: tl.constexpr,
                       HAS_BIAS: tl.constexpr, DECODE: tl.constexpr, USE_ASM: tl.constexpr):
    rows = tl.program_id(0) * 32 + tl.arange(0, 32)                    # ROW_BLOCK = 32
    span = tl.arange(0, SPANS)
    live = (span < spans)[:, None]
    pos = tl.load(starts_ptr + rows[None, :] * spans + span[:, None], mask=live, other=0)
    acc = tl.zeros((SPANS, 32, BLOCK_M), dtype=tl.float32)
    col = span[:, None] * 256                                           # SPAN = 256
    for _ in range(0, 256, 4):
        for _pair in tl.static_range(2):
            entry0, entry1, pos = _two_symbols(lut_ptr, words_ptr, pos, USE_ASM)
            acc = _use(entry0, col, live, rows, acc, x_ptr, out_ptr, scale, M, N, K, BLOCK_M,
                       EVEN_K, DECODE)
            acc = _use(entry1, col + 1, live, rows, acc, x_ptr, out_ptr, scale, M, N, K, BLOCK_M,
                       EVEN_K, DECODE)
            col += 2
    if not DECODE:
        ms = tl.arange(0, BLOCK_M)
        y = tl.sum(acc, axis=0) * scale                                 # (32, BLOCK_M)
        if HAS_BIAS:
            y += tl.load(bias_ptr + rows, mask=rows < N, other=0.0).to(tl.float32)[:, None]
        tl.store(out_ptr + ms[None, :] * N + rows[:, None], y.to(out_ptr.dtype.element_ty),
                 mask=(rows < N)[:, None] & (ms < M)[None, :])


def _launch(x, p: PreparedHPTQ, bias, out, decode: bool) -> None:
    spans = p.padded_k // SPAN
    m = 1 if decode else x.shape[0]
    _hptq_lanes_kernel[(triton.cdiv(p.out_features, ROW_BLOCK),)](
        x, p.words, p.starts, p.lut, bias if bias is not None else out, out, p.scale, m,
        p.out_features, p.in_features, spans, SPANS=triton.next_power_of_2(spans),
        BLOCK_M=triton.next_power_of_2(m), EVEN_K=p.in_features == p.padded_k,
        HAS_BIAS=bias is not None, DECODE=decode, USE_ASM=not triton_interpret(),
        num_warps=NUM_WARPS)


def hptq_gemv(x: torch.Tensor, prepared: PreparedHPTQ, bias: torch.Tensor | None = None) -> torch.Tensor:
    """x (M, K) contiguous fp16/bf16/fp32, 1 ≤ M ≤ GEMV_MAX_M → (M, N) = x · Wqᵀ (+ bias) in x.dtype."""
    m = x.shape[0]
    if not 1 <= m <= GEMV_MAX_M:
        raise ValueError(f"x: fused GEMV takes 1..{GEMV_MAX_M} rows, got {m}")
    out = torch.empty(m, prepared.out_features, dtype=x.dtype, device=x.device)
    _launch(x, prepared, bias, out, decode=False)
    return out


def hptq_decode(prepared: PreparedHPTQ, dtype: torch.dtype) -> torch.Tensor:
    """Dense dequantized weight scale · z (N, K) in `dtype` (float16 / bfloat16 / float32)."""
    if dtype not in (torch.float16, torch.bfloat16, torch.float32):
        raise ValueError(f"dtype: {dtype} not in float16, bfloat16, float32")
    p = prepared
    out = torch.empty(p.out_features, p.in_features, dtype=dtype, device=p.device)
    _launch(out, p, None, out, decode=True)
    return out


def static_compile(compile_fn, in_features: int = 4096) -> tuple[object, float]:
    """Compile the decode-GEMV at M = 1, K = in_features with `compile_fn`
    (benchmarks/kernel_static.compile_sm90) → (kernel, symbols each thread decodes per iteration)."""
    spans = -(-in_features // SPAN)
    sig = dict(x_ptr="*bf16", words_ptr="*i32", starts_ptr="*i32", lut_ptr="*i32", bias_ptr="*bf16",
               out_ptr="*bf16", scale="fp32", M="constexpr", N="i32", K="i32", spans="i32")
    consts = dict(M=1, SPANS=triton.next_power_of_2(spans), BLOCK_M=1,
                  EVEN_K=in_features % SPAN == 0, HAS_BIAS=False, DECODE=False, USE_ASM=True)
    kernel = compile_fn(_hptq_lanes_kernel, sig, consts, NUM_WARPS, 3,
                        ("x_ptr", "words_ptr", "starts_ptr", "lut_ptr", "out_ptr", "N", "K"))
    lanes_per_thread = triton.next_power_of_2(spans) * 32 / (32 * NUM_WARPS)
    return kernel, 4 * lanes_per_thread
