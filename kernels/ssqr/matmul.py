"""The SSQR Triton kernel: y = x_perm · W_storedᵀ (+ outliers, bias), one launch per linear.

x_perm = x[:, perm] (gathered once per call by the launcher); W_stored[n, k] = scale[k // G, n] ·
z[n, k]. Grid (N tiles, SPLIT_K, M tiles); program (pid_n, pid_k, pid_m) owns a (BLOCK_M, BLOCK_N)
output tile and the pid_k-th contiguous share of the K tiles.
- Per K tile (inside one scale group: BLOCK_K divides G, hence K): one load of each packed word as a
  (BLOCK_N, words) int32 tile, unpacked in registers (tiles.load_codes: one LOP3 + one HFMA2 per
  two weights on CUDA), then `tl.dot` on tensor cores with x (BLOCK_M, BLOCK_K) — padded to 16
  rows for small M (mma.sync), 64+ rows for large M (wgmma on sm_90) — in float32, times the
  group scale per column. The loop is software-pipelined (`tl.range(num_stages=STAGES)`: cp.async).
- Outliers: this program's share of the slots, in slabs (outliers.outlier_slabs), for the first
  BLOCK_MO = min(BLOCK_M, next_pow2(M)) rows only.
- Split-K in the same launch: every program stores its float32 partial into `ws` (SPLIT_K, M, N),
  then takes a ticket from the tile's counter in `locks`; the last one sums the partials, resets
  the counter to 0 (so no memset is ever needed) and writes bias + sum in x's dtype.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from babai_kernels.common import triton_interpret
from babai_kernels.ssqr.outliers import outlier_slabs, spread_rows
from babai_kernels.ssqr.tiles import load_codes, offset_codes

SPLIT_MAX_M_TILES = 4   # split-K is used for at most this many M tiles (sizes the locks buffer)


@triton.jit
def _ssqr_kernel(x_ptr, qw_ptr, sc_ptr, ocol_ptr, oval_ptr, cap, bias_ptr, out_ptr, ws_ptr, lock_ptr,
                 M, N, K, split_k,
                 GROUP: tl.constexpr, BITS: tl.constexpr, HAS_OUTLIERS: tl.constexpr, HAS_BIAS: tl.constexpr,
                 BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
                 BLOCK_MO: tl.constexpr, SLAB: tl.constexpr, STAGES: tl.constexpr,
                 USE_ASM: tl.constexpr, DOT_FP32: tl.constexpr):
    pid_n, pid_k, pid_m = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    mask_m, mask_n = offs_m < M, offs_n < N
    x_rows = x_ptr + offs_m.to(tl.int64)[:, None] * K
    BF16: tl.constexpr = x_ptr.dtype.element_ty == tl.bfloat16
    k_tiles = tl.cdiv(K, BLOCK_K)
    share = tl.cdiv(k_tiles, split_k)
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for tile in tl.range(pid_k * share, tl.minimum(pid_k * share + share, k_tiles),
                         num_stages=STAGES):
        k0 = tile * BLOCK_K
        offs_k = k0 + tl.arange(0, BLOCK_K)
        xs = tl.load(x_rows + offs_k[None, :], mask=mask_m[:, None], other=0.0)
        codes = load_codes(qw_ptr, N, K, k0, offs_n, mask_n, BITS, BLOCK_N, BLOCK_K, BF16, USE_ASM)
        if DOT_FP32:  # TRITON_INTERPRET's tl.dot multiplies bfloat16 bit patterns as integers
            part = tl.dot(xs.to(tl.float32), tl.trans(codes.to(tl.float32)), input_precision="ieee")
        else:
            part = tl.dot(xs, tl.trans(codes))
        if offset_codes(BITS, BF16):   # codes are 128 + u = z + 136
            part -= 136.0 * tl.sum(xs.to(tl.float32), axis=1)[:, None]
        scale = tl.load(sc_ptr + (k0 // GROUP) * N + offs_n, mask=mask_n, other=0.0)
        acc += part * scale.to(tl.float32)[None, :]
    if HAS_OUTLIERS:
        slots = tl.cdiv(cap, split_k)
        offs_mo = pid_m * BLOCK_M + tl.arange(0, BLOCK_MO)
        acc += spread_rows(outlier_slabs(x_ptr, K, ocol_ptr, oval_ptr, pid_k * slots,
                                         tl.minimum(pid_k * slots + slots, cap), N, offs_mo,
                                         offs_mo < M, offs_n, mask_n, BLOCK_MO, BLOCK_N, SLAB),
                           BLOCK_M)
    mask = mask_m[:, None] & mask_n[None, :]
    rows_n = offs_m.to(tl.int64)[:, None] * N + offs_n[None, :]
    last = pid_k == 0
    if split_k > 1:
        tl.store(ws_ptr + pid_k * M * N + rows_n, acc, mask=mask)
        tl.debug_barrier()  # every thread's partial is written before the ticket is taken
        lock = lock_ptr + pid_m * tl.num_programs(0) + pid_n
        last = tl.atomic_add(lock, 1, sem="acq_rel", scope="gpu") == split_k - 1
        if last:
            acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
            for part_k in range(0, split_k):
                acc += tl.load(ws_ptr + part_k * M * N + rows_n, mask=mask, other=0.0,
                               cache_modifier=".cg")
            tl.atomic_xchg(lock, 0, sem="relaxed", scope="gpu")
    if last:
        if HAS_BIAS:
            acc += tl.load(bias_ptr + offs_n, mask=mask_n, other=0.0).to(tl.float32)[None, :]
        tl.store(out_ptr + rows_n, acc.to(out_ptr.dtype.element_ty), mask=mask)


PARAMS = dict(x_ptr="act", qw_ptr="*i32", sc_ptr="*fp16", ocol_ptr="*i16", oval_ptr="*fp16",
              cap="i32", bias_ptr="act", out_ptr="act", ws_ptr="*fp32", lock_ptr="*i32", M="i32",
              N="i32", K="i32", split_k="i32")   # "act": x's pointer type
DIVISIBLE = ("x_ptr", "qw_ptr", "sc_ptr", "ocol_ptr", "oval_ptr", "bias_ptr", "out_ptr", "ws_ptr",
             "lock_ptr", "N", "K")   # specialized ÷16 at compile (as Triton's launcher finds them)


def constexprs(bits: int, group: int, has_outliers: bool, has_bias: bool, cfg: dict, m: int,
               bf16: bool, interpret: bool = False) -> dict:
    """The kernel's constexprs for a launch at M = m with config cfg (M itself when m == 1, as
    Triton specializes it); `interpret`: the TRITON_INTERPRET variant (portable unpack, fp32 dot)."""
    consts = dict(GROUP=group, BITS=bits, HAS_OUTLIERS=has_outliers, HAS_BIAS=has_bias,
                  BLOCK_M=cfg["BLOCK_M"], BLOCK_N=cfg["BLOCK_N"],
                  BLOCK_K=min(cfg["BLOCK_K"], group & -group),   # a power of two dividing G
                  BLOCK_MO=min(cfg["BLOCK_M"], triton.next_power_of_2(m)), SLAB=cfg.get("SLAB", 16),
                  STAGES=cfg["num_stages"], USE_ASM=not interpret, DOT_FP32=interpret and bf16)
    if m == 1:
        consts["M"] = 1
    return consts


def compile_spec(bits: int, act: str, group: int, has_outliers: bool, has_bias: bool, cfg: dict,
                 m: int) -> tuple[dict, dict]:
    """(signature in argument order, constexprs) of the CUDA kernel as `launch` runs it at M = m
    for activations `act` ("bf16" | "fp16"): what benchmarks.kernel_static and the AOT bundle
    compile."""
    consts = constexprs(bits, group, has_outliers, has_bias, cfg, m, act == "bf16")
    types = {n: f"*{act}" if t == "act" else t for n, t in PARAMS.items()}
    return {n: "constexpr" if n in consts else types[n] for n in _ssqr_kernel.arg_names}, consts


def launch_reason(bits: int, group: int, has_outliers: bool, has_bias: bool, act_dtype: torch.dtype,
                  device: torch.device) -> str | None:
    """Why the kernel cannot launch for such a layer on `device` (None: it can): launching from the
    AOT bundle (babai_kernels.aot.use_aot) with no Triton to compile what it lacks, the bundle must
    hold, at M = 1, 16 and 128, a cubin of at least one tile the tuner may pick (tuning.TILES)."""
    from babai_kernels import aot
    from babai_kernels.ssqr.tuning import TILES, m_range
    if not aot.use_aot(device) or aot.jit_available():
        return None
    act = {torch.bfloat16: "bf16", torch.float16: "fp16"}[act_dtype]
    for m in (1, 16, 128):
        missing = []
        for bm, bn, bk, warps, stages in TILES[m_range(m)]:
            cfg = dict(BLOCK_M=bm, BLOCK_N=bn, BLOCK_K=bk, num_warps=warps, num_stages=stages)
            sig, consts = compile_spec(bits, act, group, has_outliers, has_bias, cfg, m)
            try:
                aot.bundle().find("ssqr", consts, sig, warps, stages)
                break
            except aot.MissingVariant as e:
                missing.append(str(e))
        else:
            return f"M={m}: {missing[0]}"
    return None


def launch(xp: torch.Tensor, p, bias: torch.Tensor | None, cfg: dict) -> torch.Tensor:
    """y (M, N) in xp.dtype for xp = x[:, perm] (M, K) contiguous fp16/bf16, layer p, config cfg.

    cfg: BLOCK_M, BLOCK_N, BLOCK_K (clipped to divide G), SPLIT_K, num_warps, num_stages. On CUDA
    with a Triton older than 3.9 the kernel runs from the AOT bundle (babai_kernels.aot) where it
    holds the variant, else the older Triton compiles it (aot.jit_available).
    """
    from babai_kernels import aot
    m, n = xp.shape[0], p.n
    m_tiles = triton.cdiv(m, cfg["BLOCK_M"])
    split_k = cfg["SPLIT_K"] if m_tiles <= SPLIT_MAX_M_TILES else 1
    out = torch.empty(m, n, dtype=xp.dtype, device=xp.device)
    ws = torch.empty(split_k if split_k > 1 else 0, m, n, dtype=torch.float32, device=xp.device)
    grid = (triton.cdiv(n, cfg["BLOCK_N"]), split_k, m_tiles)
    args = dict(x_ptr=xp, qw_ptr=p.qcodes, sc_ptr=p.scales, ocol_ptr=p.outlier_cols,
                oval_ptr=p.outlier_vals, cap=p.cap, bias_ptr=bias if bias is not None else out,
                out_ptr=out, ws_ptr=ws, lock_ptr=p.locks, M=m, N=n, K=p.k, split_k=split_k)
    consts = constexprs(p.bits, p.group_size, p.has_outliers, bias is not None, cfg, m,
                        xp.dtype == torch.bfloat16, triton_interpret())
    if aot.use_aot(xp.device):
        try:
            aot.launch("ssqr", grid, args, consts, cfg["num_warps"], cfg["num_stages"])
            return out
        except aot.MissingVariant:
            if not aot.jit_available():
                raise
    _ssqr_kernel[grid](**{**args, **consts}, num_warps=cfg["num_warps"], num_stages=cfg["num_stages"])
    return out
