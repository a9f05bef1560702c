"""SSQR (scale-adjusted SpQR, arXiv 2507.18553 §5): b-bit inliers + float16 outliers, no clipping.

Search (paper §5; per output row, all rows in one batched sweep per step):

    s0  ← MSE group scales in quantization order (groups contiguous in perm), float16
    m[n] starts where round-to-nearest would give row n the target rate (a quantile of |w|/s0)
    for each step:
        s[n, g] ← float16(m[n] · s0[n, g])
        sweep with the overflow grid: an out-of-range code makes w̃ an outlier, kept as float16(w̃)
        bisect log m[n] on row n's outlier count (it falls as m grows) toward rate · K
    keep, per row, the evaluated m whose outlier count is closest to the target
    rescue: a row whose error exceeds ¼ Σ_k D_k s0_k² (Babai's bound for the all-inlier grid at the
        MSE scales, m = 1) gave up more accuracy than Babai guarantees at m = 1 to reach the rate;
        where GPTQ with clipping at s0 does better on that row, the row is stored clipped
        (0 outliers, scales s0; no bound applies to it)

Options (same format; issue 15): scale_init 'mse' (default, GPTQ's clipping-tuned scales) |
'rms' | 'absmax' sets the per-group scale shape s0 that the row multiplier scales (the rescue and
its bound still use the MSE scales). rate_mode 'closest' (default) keeps the point whose outlier
count is closest to rate·K; 'cap' makes cap = round(rate·K) a hard per-row limit (it is the
ELL width, so every slot below it is already paid for) and keeps, per row, the evaluated point of
least sweep loss with at most cap outliers (the closest point where none was found).

Rows are independent in GPTQ (they share only H and the order), so a row's evaluation at
its chosen m is exactly its result; no final sweep is needed. The rescue exists for ill-conditioned
layers (e.g. SmolLM2's late down_proj at 3 bits), where error propagation makes the outlier count
non-monotone in m and only an enormous m meets the rate.
"""
from __future__ import annotations

import math
import time

import torch

from babai_kernels.contract import BLOCK, MAX_K, SSQR_BITS
from babai_kernels.ssqr.pack import pack_ssqr
from babai_quantizer.lattice import (ClippedGrid, OverflowGrid, achieved_error, babai_bound, coordinate_scales,
                               group_scales, step_group_index, sweep)

from babai_quantizer.options import RATE_MODES, SCALE_INITS

from .bisection import LogBisection
from .layer import check_row_parallel_blocks, prepare_layer, validate_common
from .result import FormatResult, effective_bits

FP16_MAX = torch.finfo(torch.float16).max
FP16_TINY = torch.finfo(torch.float16).tiny
MULTIPLIER_RANGE = (2.0 ** -12, 2.0 ** 12)   # search limits of the per-row multiplier m
FP16_ROUNDING = 2.0 ** -10          # |w − float16(w)| ≤ 2^-10·|float16(w)| + 2^-24, generously


def multiplied_scales(s0: torch.Tensor, log_m: torch.Tensor) -> torch.Tensor:
    """float16(m[n] · s0[n, g]) as float32, kept inside the positive normal float16 range.

    s0: (N, n_groups) float16-valued scales; log_m: (N,) float64."""
    s = s0.double() * torch.exp(log_m.to(s0.device))[:, None]
    return s.clamp(FP16_TINY, FP16_MAX).to(torch.float16).to(torch.float32)


def rtn_start_multiplier(W_q: torch.Tensor, s0_cols: torch.Tensor, bits: int,
                         outlier_rate: float) -> torch.Tensor:
    """(N,) float64 m at which round-to-nearest (no propagation) has the target outlier rate.

    W_q, s0_cols: (N, K) weights and their scales in quantization order. RTN overflows where
    |w| / (m·s) > 2^(b−1) − ½, so m is the (1 − rate) quantile of |w| / (s·(2^(b−1) − ½))."""
    a = (W_q.double() / s0_cols.double()).abs() / ((1 << (bits - 1)) - 0.5)
    return torch.quantile(a, 1.0 - outlier_rate, dim=1).cpu()




def initial_scales(Wd: torch.Tensor, bits: int, group_size: int, perm: torch.Tensor, scale_init: str) -> torch.Tensor:
    """(N, K/G) float16-valued float32 group scales (groups contiguous in `perm`) before the row
    multiplier: 'mse' | 'absmax' (lattice.group_scales), 'rms' (root mean square of the group; only
    the shape across a row's groups matters, the multiplier search sets the level)."""
    if scale_init in ("mse", "absmax"):
        return group_scales(Wd, bits, group_size, order=perm, method=scale_init)
    rms = Wd[:, perm].double().reshape(Wd.shape[0], -1, group_size).square().mean(-1).sqrt()
    return rms.to(torch.float16).to(torch.float32).clamp_min(FP16_TINY)


def outlier_rounding_bound(q: torch.Tensor, outlier: torch.Tensor, perm: torch.Tensor,
                           D: torch.Tensor) -> torch.Tensor:
    """(N,) float64 bound on the error terms Σ_outliers D_k (w̃_k − float16(w̃_k))² (original order)."""
    r = (FP16_ROUNDING * q.double().abs() + 2.0 ** -24) * outlier
    return (r[:, perm].square() * D.double().to(q.device)[None, :]).sum(1)


class CappedChoice:
    """rate_mode 'cap': per row, the evaluated point of least sweep loss with ≤ cap outliers
    (until a row has one, the bisection's closest point). x: (N,) float64 chosen log m."""

    def __init__(self, n: int, cap: int):
        self.cap = cap
        self.loss = torch.full((n,), math.inf, dtype=torch.float64)
        self.found = torch.zeros(n, dtype=torch.bool)
        self.x = torch.full((n,), math.nan, dtype=torch.float64)

    def update(self, log_m: torch.Tensor, counts: torch.Tensor, loss: torch.Tensor,
               closest: torch.Tensor) -> torch.Tensor:
        """(N,) bool: keep this evaluation for the row (log_m, counts, loss, closest: (N,) CPU)."""
        ok = counts <= self.cap
        take = ok & (loss.double() < self.loss)
        keep = torch.where(self.found | ok, take, closest)
        self.loss = torch.where(take, loss.double(), self.loss)
        self.x = torch.where(keep, log_m.double(), self.x)
        self.found |= ok
        return keep


def rescue_rows(Wd: torch.Tensor, prep, s0: torch.Tensor, gidx: torch.Tensor, bits: int,
                error: torch.Tensor, best: dict, block_size: int) -> torch.Tensor:
    """Store clipped GPTQ rows (at the MSE scales s0) where the search's row is worse than both
    Babai's all-inlier bound at s0 and the clipped row. Updates `best` ("codes", "q", "outlier",
    "scales": (N, ·) search outputs) and `error` (N,) float64 in place; returns the (N,) bool
    mask of the rows replaced."""
    suspect = error > babai_bound(coordinate_scales(s0, prep.perm, gidx), prep.perm, prep.D)
    clipped = torch.zeros_like(suspect)
    if not suspect.any():
        return clipped
    rows = suspect.nonzero().flatten()
    res = sweep(Wd[rows], prep, s0[rows], gidx, ClippedGrid(bits), block_size=block_size)
    clip_error = achieved_error(Wd[rows], res.q, prep.H)
    better = clip_error < error[rows]
    rows = rows[better]
    clipped[rows] = True
    error[rows] = clip_error[better]
    for name, value in (("codes", res.codes), ("q", res.q), ("outlier", res.outlier), ("scales", s0[suspect])):
        best[name][rows] = value[better].to(best[name].dtype)
    return clipped


def _check_ssqr_args(K: int, bits, group_size, outlier_rate, steps, rate_tol, scale_init, rate_mode) -> None:
    if scale_init not in SCALE_INITS:
        raise ValueError(f"scale_init: {scale_init!r} not in {list(SCALE_INITS)}")
    if rate_mode not in RATE_MODES:
        raise ValueError(f"rate_mode: {rate_mode!r} not in {list(RATE_MODES)}")
    if bits not in SSQR_BITS:
        raise ValueError(f"bits: SSQR inliers are {SSQR_BITS} bits, got {bits!r}")
    if not isinstance(group_size, int) or group_size <= 0 or group_size % BLOCK or K % group_size:
        raise ValueError(f"group_size: {group_size!r} must be a multiple of {BLOCK} dividing K={K}")
    if K % BLOCK or K > MAX_K:
        raise ValueError(f"W: K={K} input columns must be a multiple of {BLOCK} and at most {MAX_K}")
    if not isinstance(outlier_rate, (int, float)) or not 0 <= outlier_rate <= 0.05:
        raise ValueError(f"outlier_rate: expected a fraction in [0, 0.05], got {outlier_rate!r}")
    if not isinstance(rate_tol, (int, float)) or not 0 <= rate_tol <= 0.005:
        raise ValueError(f"rate_tol: expected a fraction in [0, 0.005], got {rate_tol!r}")
    if not isinstance(steps, int) or steps < 1:
        raise ValueError(f"steps: expected a positive integer, got {steps!r}")


def quantize_ssqr(W: torch.Tensor, H: torch.Tensor, *, bits: int = 4, group_size: int = 128,
                  outlier_rate: float = 0.01, ordering: str = "act", damping: float = 0.01,
                  row_parallel_blocks: int = 1, G_cross: torch.Tensor | None = None,
                  steps: int = 24, rate_tol: float = 0.0025, block_size: int = 128, dtype: torch.dtype = torch.float32,
                  device=None, scale_init: str = "mse", rate_mode: str = "closest") -> FormatResult:
    """Quantize W (N, K) float with Hessian H = XᵀX (K, K) to SSQR (docs/format.md §2).

    bits: inlier bits 2/3/4. group_size: columns per float16 scale, contiguous in quantization
    (= stored) order. outlier_rate: target fraction of outliers per row, 0 … 0.05. ordering:
    'act' | 'min-pivot' | 'identity', block-local over `row_parallel_blocks` column blocks.
    G_cross: (K, K) X̂ᵀX for the float target. steps: most batched sweeps in the search;
    a row is done once |rate − outlier_rate| ≤ rate_tol (or within half an outlier).
    dtype/device: sweep precision and device. scale_init, rate_mode: see the module docstring. Returns FormatResult with outlier_rate (N,) and
    bound = Babai bound on the inliers + float16 rounding bound of the outliers (NaN on the
    rows stored clipped by the rescue; their indices are in search["clipped_rows"]).
    """
    validate_common(W, H, G_cross, damping)
    N, K = W.shape
    _check_ssqr_args(K, bits, group_size, outlier_rate, steps, rate_tol, scale_init, rate_mode)
    check_row_parallel_blocks(K, row_parallel_blocks, group_size)
    start = time.perf_counter()
    Wd, prep = prepare_layer(W, H, ordering=ordering, damping=damping,
                             row_parallel_blocks=row_parallel_blocks, G_cross=G_cross,
                             dtype=dtype, device=device)
    gidx = step_group_index(prep.perm, group_size, "quant_order")
    s_mse = group_scales(Wd, bits, group_size, order=prep.perm, method="mse")
    s0 = s_mse if scale_init == "mse" else initial_scales(Wd, bits, group_size, prep.perm, scale_init)
    grid = OverflowGrid(bits)

    m0 = rtn_start_multiplier(Wd[:, prep.perm], s0[:, gidx], bits, outlier_rate)
    tol = max(0.5, rate_tol * K)
    cap = round(outlier_rate * K)
    target, tol = (outlier_rate * K, tol) if rate_mode == "closest" else (max(cap - tol / 2, 0.0), tol / 2)
    search = LogBisection(torch.log(m0.clamp_min(MULTIPLIER_RANGE[0])),
                          torch.full((N,), float(target)), tol=tol,
                          step=math.log(1.1), x_tol=1e-3,
                          x_min=math.log(MULTIPLIER_RANGE[0]), x_max=math.log(MULTIPLIER_RANGE[1]))
    best = None
    trace = []
    chosen = CappedChoice(N, cap) if rate_mode == "cap" else None
    while not search.done() and search.steps < steps:
        log_m = search.propose()
        scales = multiplied_scales(s0, log_m)
        res = sweep(Wd, prep, scales, gidx, grid, block_size=block_size)
        counts = res.outlier.sum(1).cpu()
        better = search.update(log_m, counts)
        if chosen is not None:
            better = chosen.update(log_m, counts, res.loss.cpu(), better)
        better = better.to(res.codes.device)
        trace.append((float(counts.double().mean() / K), int((~search.done_mask()).sum())))
        if best is None:
            best = {"codes": res.codes, "q": res.q, "outlier": res.outlier, "scales": scales}
        else:
            for name, value in (("codes", res.codes), ("q", res.q), ("outlier", res.outlier),
                                ("scales", scales)):
                best[name] = torch.where(better[:, None], value, best[name])

    perm = prep.perm
    error = achieved_error(Wd, best["q"], prep.H)
    clipped = rescue_rows(Wd, prep, s_mse, gidx, bits, error, best, block_size)
    q = best["q"].to(torch.float32) + 0.0                   # −0.0 → +0.0, as the dequantizer gives
    outliers = torch.where(best["outlier"], q, torch.zeros_like(q)).to(torch.float16)
    tensors = pack_ssqr(best["codes"][:, perm], best["scales"].to(torch.float16), perm,
                        outliers[:, perm], bits)
    S = coordinate_scales(best["scales"], perm, gidx)
    bound = babai_bound(S, perm, prep.D, include=~best["outlier"]) \
        + outlier_rounding_bound(q, best["outlier"], perm, prep.D)
    bound[clipped] = math.nan
    log_m = search.best_x if chosen is None else chosen.x
    return FormatResult(
        format="ssqr", tensors=tensors, q_dequant=q.cpu(),
        error=error.cpu(), bound=bound.cpu(),
        effective_bits=effective_bits(tensors, N, K),
        outlier_rate=best["outlier"].sum(1).double().cpu() / K,
        search={"steps": search.steps, "seconds": time.perf_counter() - start,
                "mean_rate_and_active_rows_per_step": trace, "trace_D": prep.trace_D,
                "damping_used": prep.damping, "scale_init": scale_init, "rate_mode": rate_mode, "row_parallel_blocks": row_parallel_blocks,
                "multiplier_min": math.exp(float(log_m.min())),
                "multiplier_max": math.exp(float(log_m.max())),
                "multiplier_median": math.exp(float(log_m.median())),
                "rows_converged": int(search.done_mask().sum()),
                "clipped_rows": clipped.nonzero().flatten().tolist()})
