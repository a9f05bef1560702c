"""SSQR decode path for small M (GEMV / split-K, memory-bound, CUDA cores).

Design. y[m, n] = Σ_k x[m, perm[k]] · scales[k // G, n] · z[n, k] (+ outliers, bias).
- Grid (N tiles, SPLIT_K, M tiles). Each program owns BLOCK_N output columns and K tiles
  pid_k, pid_k + SPLIT_K, ... ; SPLIT_K > 1 raises the number of programs for small N so that
  every SM streams weights (partials are atomically added into a float32 buffer).
- Per K tile: one coalesced load of the b words of each 32-column block along N (the gather
  `row = 32-block·b + col // (32/b)` hits the same words for all columns of a field, so DRAM sees
  each word once; repeats are L1 hits), shift/mask to codes, gather x by perm (BLOCK_K values,
  shared by all N columns), broadcast-multiply in float32 and reduce over K into (BLOCK_M,
  BLOCK_N). The tile lies in one scale group (BLOCK_K divides G), so the scale is loaded once
  per tile and applied to the partial sum, not per weight.
- Epilogue (tiles.finish_tile): outliers (fused, or by the companion kernel in outliers.py),
  bias, and the store in x's dtype (SPLIT_K == 1) or float32 atomics.
Bytes moved ≈ K·N·b/8 + 2·N·K/G + 6·N·cap (+ x, y): for 4-bit, G=128, 1 % outliers ≈ 4.2 bits/weight,
i.e. a ≈3.8x bandwidth advantage over bf16 that the M=1 target (≥3.2x) relies on.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from babai_kernels.ssqr.tiles import finish_tile, kernel_args, load_codes, load_scale, load_x_tile


@triton.jit
def _ssqr_gemv_kernel(x_ptr, stride_xm, qw_ptr, sc_ptr, perm_ptr, osrc_ptr, oval_ptr, cap, bias_ptr,
                      out_ptr, stride_om, M, N, K, group_size,
                      BITS: tl.constexpr, HAS_PERM: tl.constexpr, FUSE_OUTLIERS: tl.constexpr,
                      HAS_BIAS: tl.constexpr, ATOMIC: tl.constexpr, BLOCK_M: tl.constexpr,
                      BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, SPLIT_K: tl.constexpr):
    pid_n, pid_k, pid_m = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    mask_m, mask_n = offs_m < M, offs_n < N
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for tile in range(pid_k, tl.cdiv(K, BLOCK_K), SPLIT_K):
        offs_k = tile * BLOCK_K + tl.arange(0, BLOCK_K)
        mask_k = offs_k < K
        xs = load_x_tile(x_ptr, stride_xm, perm_ptr, offs_m, offs_k, mask_m, mask_k, HAS_PERM)
        z = load_codes(qw_ptr, N, offs_k, offs_n, mask_k, mask_n, BITS)
        part = tl.sum(xs.to(tl.float32)[:, :, None] * z.to(tl.float32)[None, :, :], axis=1)
        acc += part * load_scale(sc_ptr, N, tile * BLOCK_K, group_size, offs_n, mask_n)[None, :]
    finish_tile(acc, pid_k == 0, x_ptr, stride_xm, osrc_ptr, oval_ptr, cap, bias_ptr, out_ptr,
                stride_om, N, offs_m, offs_n, mask_m, mask_n, BLOCK_M, BLOCK_N, FUSE_OUTLIERS,
                HAS_BIAS, ATOMIC)


def launch_gemv(x: torch.Tensor, p, bias: torch.Tensor | None, out: torch.Tensor, cfg: dict,
                fuse_outliers: bool, atomic: bool) -> None:
    """Run the GEMV kernel for x (M, K) contiguous into out (M, N) (see tiles.finish_tile)."""
    m, n = out.shape
    block_m = min(cfg["BLOCK_M"], triton.next_power_of_2(m))
    grid = (triton.cdiv(n, cfg["BLOCK_N"]), cfg["SPLIT_K"], triton.cdiv(m, block_m))
    args, consts = kernel_args(x, p, bias, out, fuse_outliers, atomic)
    _ssqr_gemv_kernel[grid](
        *args, **consts, BLOCK_M=block_m, BLOCK_N=cfg["BLOCK_N"], BLOCK_K=cfg["BLOCK_K"],
        SPLIT_K=cfg["SPLIT_K"], num_warps=cfg["num_warps"], num_stages=cfg["num_stages"])
