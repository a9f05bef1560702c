"""SSQR GEMM path for large M (tensor cores via tl.dot).

Design. Program (pid_m, pid_n) owns a (BLOCK_M, BLOCK_N) output tile; programs that share an N
tile are adjacent in launch order (pid_m fastest), so a decoded weight tile is read from DRAM once
and from L2 by the other M tiles. Per K tile (BLOCK_K divides G, BLOCK_* ≥ 16):
  xs  = x[offs_m, perm[offs_k]]          gathered activations, (BLOCK_M, BLOCK_K), fp16/bf16
  z   = codes of qweight                 (BLOCK_K, BLOCK_N), small integers, exact in fp16/bf16
  acc += tl.dot(xs, z) · scale[g, offs_n]  (float32 accumulate; scale once per tile and column)
Codes enter the tensor core unscaled, so dequantization costs no rounding; the scale multiply
is on the (BLOCK_M, BLOCK_N) partial product. Epilogue as in gemv.py (tiles.finish_tile).
Compute-bound for large M; the target (≥1.1x bf16 at M=128) needs the code decode hidden under
the loads (num_stages ≥ 3 on H100).
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from babai_kernels.common import triton_interpret
from babai_kernels.ssqr.tiles import finish_tile, kernel_args, load_codes, load_scale, load_x_tile


@triton.jit
def _ssqr_gemm_kernel(x_ptr, stride_xm, qw_ptr, sc_ptr, perm_ptr, osrc_ptr, oval_ptr, cap, bias_ptr,
                      out_ptr, stride_om, M, N, K, group_size,
                      BITS: tl.constexpr, HAS_PERM: tl.constexpr, FUSE_OUTLIERS: tl.constexpr,
                      HAS_BIAS: tl.constexpr, ATOMIC: tl.constexpr, BLOCK_M: tl.constexpr,
                      BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, DOT_FP32: tl.constexpr):
    m_tiles = tl.cdiv(M, BLOCK_M)
    pid_m, pid_n = tl.program_id(0) % m_tiles, tl.program_id(0) // m_tiles
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    mask_m, mask_n = offs_m < M, offs_n < N
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for tile in range(0, tl.cdiv(K, BLOCK_K)):
        offs_k = tile * BLOCK_K + tl.arange(0, BLOCK_K)
        mask_k = offs_k < K
        xs = load_x_tile(x_ptr, stride_xm, perm_ptr, offs_m, offs_k, mask_m, mask_k, HAS_PERM)
        z = load_codes(qw_ptr, N, offs_k, offs_n, mask_k, mask_n, BITS)
        if DOT_FP32:  # TRITON_INTERPRET's tl.dot multiplies bfloat16 bit patterns as integers
            part = tl.dot(xs.to(tl.float32), z.to(tl.float32), input_precision="ieee")
        else:
            part = tl.dot(xs, z.to(xs.dtype))
        acc += part * load_scale(sc_ptr, N, tile * BLOCK_K, group_size, offs_n, mask_n)[None, :]
    # No split-K here: every tile is the first (only) K part, so is_first is always true.
    finish_tile(acc, pid_m >= 0, x_ptr, stride_xm, osrc_ptr, oval_ptr, cap, bias_ptr, out_ptr,
                stride_om, N, offs_m, offs_n, mask_m, mask_n, BLOCK_M, BLOCK_N, FUSE_OUTLIERS,
                HAS_BIAS, ATOMIC)


def launch_gemm(x: torch.Tensor, p, bias: torch.Tensor | None, out: torch.Tensor, cfg: dict,
                fuse_outliers: bool, atomic: bool) -> None:
    """Run the GEMM kernel for x (M, K) contiguous into out (M, N) (see tiles.finish_tile)."""
    m, n = out.shape
    grid = (triton.cdiv(m, cfg["BLOCK_M"]) * triton.cdiv(n, cfg["BLOCK_N"]),)
    args, consts = kernel_args(x, p, bias, out, fuse_outliers, atomic)
    _ssqr_gemm_kernel[grid](
        *args, **consts, BLOCK_M=cfg["BLOCK_M"], BLOCK_N=cfg["BLOCK_N"], BLOCK_K=cfg["BLOCK_K"],
        DOT_FP32=triton_interpret() and x.dtype == torch.bfloat16, num_warps=cfg["num_warps"],
        num_stages=cfg["num_stages"])
