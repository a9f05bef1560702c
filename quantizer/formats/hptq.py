"""HPTQ (Huffman PTQ, arXiv 2507.18553 §5) and its round-to-nearest control HRTN.

One float32 scale s per matrix, unbounded integer codes z (no clipping), entropy-coded
(kernels/hptq: canonical length-limited Huffman, escapes, chunked stream). Search:

    x ← log(max|W|) − (target + 1)·log 2, within log(max|W|) + [−24, 4]·log 2 (beyond: all codes
        0 or codes not exact in float32)
    repeat: s ← float32(e^x); z ← sweep (HPTQ) or round(W/s) (HRTN) on the unbounded grid;
            bits ← coded_bits(z) / (N·K)  (every stored bit: stream, chunk_bits, table, scale)
            bisect x (bits fall as s grows, ≈ 1 bit per doubling of s: the model step) until
            |bits − target| ≤ tol
    keep the evaluated s whose bits are closest to the target

Per-column steps (col_steps='ldl', WaterSIC arXiv 2603.04956): column j's step is s·α_j with
α_j ∝ D_jj^{-1/2}, D the LDL diagonal of the damped Hessian in the Babai order (equal distortion
D_jj·(α_j s)² per Gram–Schmidt direction, the high-rate waterfilling solution), normalized to a
geometric mean of 1 over the live columns and rounded to float16 (stored as `col_steps`, docs/format.md
§3). The waterfilling floor needs no rule of its own on the unbounded grid: a column whose step
exceeds twice its propagated coordinates rounds to all zeros (zero entropy). 'ldl<p>' uses α ∝ D^{-p/2}.
Babai's bound becomes ¼ Σ_j D_jj α_j² s² per row.

With reduce='lll' | 'bkz-<B>' the sweep is Babai on the basis R·T reduced once per layer
(lattice.reduction: T depends on R only, so it serves every row and every s of the search) and
z = T·z'. Codes are stored in original column order (no permutation).
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Callable

import torch

from babai_kernels.hptq.pack import choose_chunk_cols, coded_bits, dequantize_codes, encode_hptq
from babai_quantizer.lattice import (UnboundedGrid, achieved_error, babai_bound, damp, fix_dead_inputs,
                               prepare_hessian, rtn_quantize, sweep)
from babai_quantizer.lattice.reduction import BasisReduction, parse_method, reduce_basis
from babai_quantizer.lattice.sweep import PreparedHessian

from babai_quantizer.allocation import resolve_target
from babai_quantizer.options import parse_col_steps

from .bisection import LogBisection
from .layer import prepare_layer, validate_common
from .result import FormatResult, effective_bits

TARGET_TOLERANCE = 0.05        # acceptance: achieved bits/weight within ±0.05 of the target
MAX_TARGET_BITS = 6            # beyond, the GPU lane code (≤ 1024 symbols of ≤ 10 bits) costs > 10 % and bf16
                               # serves better than an entropy-coded format
MAX_CODE_MAGNITUDE = 2.0 ** 24  # codes beyond this are not exact in float32: scale far too small
COL_STEP_RANGE = (2.0 ** -14, 2.0 ** 15)   # α stays a normal float16


def column_steps(D: torch.Tensor, perm: torch.Tensor, dead: torch.Tensor, power: float = 1.0) -> torch.Tensor:
    """α (K,) float16 in original column order: α[perm[k]] ∝ D_k^{-power/2} (D (K,) the LDL diagonal in
    quantization order), geometric mean 1 over the live columns, dead columns 1, clamped to COL_STEP_RANGE."""
    a = torch.empty(D.shape[0], dtype=torch.float64)
    a[perm.cpu()] = D.double().cpu().pow(-power / 2)
    live = ~dead.cpu()
    if live.any():
        a = a / torch.exp(torch.log(a[live]).mean())
    a[~live] = 1.0
    return a.clamp(*COL_STEP_RANGE).to(torch.float16)


def _check_hptq_args(K: int, target_bits, chunk_cols, row_parallel_blocks, steps, tol) -> int:
    """Validate; return the chunk width C."""
    if not isinstance(target_bits, (int, float)) or not 1 < target_bits <= MAX_TARGET_BITS:
        raise ValueError(f"target_bits: expected a number in (1, {MAX_TARGET_BITS}] (above it the GPU kernel's "
                         f"10-bit lane code costs over 10 %), got {target_bits!r}")
    if not isinstance(steps, int) or steps < 1:
        raise ValueError(f"steps: expected a positive integer, got {steps!r}")
    if not isinstance(tol, (int, float)) or not 0 < tol <= TARGET_TOLERANCE:
        raise ValueError(f"tol: expected a number in (0, {TARGET_TOLERANCE}], got {tol!r}")
    if not isinstance(row_parallel_blocks, int) or row_parallel_blocks < 1:
        raise ValueError(f"row_parallel_blocks: expected a positive integer, got {row_parallel_blocks!r}")
    if chunk_cols is None:
        return choose_chunk_cols(K, row_parallel_blocks)
    if not isinstance(chunk_cols, int) or chunk_cols < 1 or K % chunk_cols:
        raise ValueError(f"chunk_cols: {chunk_cols!r} must be a positive divisor of K={K}")
    return chunk_cols


def _side_bits(alpha: torch.Tensor | None) -> int:
    """Stored bits of the col_steps tensor (0 without)."""
    return 0 if alpha is None else 8 * alpha.numel() * alpha.element_size()


def search_matrix_scale(codes_at: Callable[[float], tuple[torch.Tensor, torch.Tensor]],
                        max_abs: float, shape: tuple[int, int], *, target_bits: float,
                        chunk_cols: int, steps: int, tol: float, side_bits: int = 0) -> dict:
    """Bisect the matrix scale so coded bits/weight ≈ target_bits (side_bits: stored bits beside the
    codes, e.g. 16·K for col_steps, counted in every evaluation).

    codes_at(scale) → (z (N, K) int32, q (N, K) float), original column order.
    Returns {scale, z, q, bits, steps, bits_per_step}; raises ValueError naming target_bits if
    the closest evaluated point misses the target by more than TARGET_TOLERANCE.
    """
    N, K = shape
    log_max, log2 = math.log(max(max_abs, 1e-30)), math.log(2.0)
    x0 = log_max - (target_bits + 1) * log2
    search = LogBisection(torch.tensor([x0]), torch.tensor([float(target_bits)]), tol=tol,
                          x_tol=1e-6, x_min=log_max - 24 * log2, x_max=log_max + 4 * log2,
                          slope=-1 / log2)
    best, trace = None, []
    while not search.done() and search.steps < steps:
        x = search.propose()
        scale = float(torch.exp(x).to(torch.float32))
        z = q = None
        if max_abs / scale < MAX_CODE_MAGNITUDE:
            z, q = codes_at(scale)
            bits = (coded_bits(z, chunk_cols) + side_bits) / (N * K)
        else:
            bits = math.inf
        trace.append(bits)
        if bool(search.update(x, torch.tensor([bits]))[0]) and z is not None:
            best = {"scale": scale, "z": z, "q": q, "bits": bits}
    if best is None or abs(best["bits"] - target_bits) > TARGET_TOLERANCE:
        got = "nothing" if best is None else f"{best['bits']:.4f}"
        raise ValueError(f"target_bits: {target_bits} not reached within ±{TARGET_TOLERANCE} in "
                         f"{search.steps} steps (closest: {got} bits/weight)")
    return {**best, "steps": search.steps, "bits_per_step": trace}


def _format_result(fmt: str, found: dict, chunk_cols: int, error: torch.Tensor,
                   bound: torch.Tensor | None, extra: dict) -> FormatResult:
    z, q = found["z"].cpu(), found["q"].cpu()
    tensors = encode_hptq(z, found["scale"], chunk_cols, col_steps=extra.get("col_steps"))
    N, K = z.shape
    return FormatResult(
        format=fmt, tensors=tensors, q_dequant=q.to(torch.float32) + 0.0,   # −0.0 → +0.0
        error=error.cpu(), bound=None if bound is None else bound.cpu(),
        effective_bits=effective_bits(tensors, N, K),
        search={"steps": found["steps"], "bits_per_step": found["bits_per_step"],
                "scale": found["scale"], "chunk_cols": chunk_cols,
                **{k: v for k, v in extra.items() if k != "col_steps"}})


@dataclass
class HptqSweep:
    """HPTQ's sweep of one prepared layer on the plain or the reduced basis (set up once per layer).

    W: (N, K) float64 weights the sweep rounds (T⁻¹w_t when reduced); prep: the sweep's prepared
    Hessian (H' = TᵀH_T T, GPTQ order reverse(0..K-1), when reduced); reduction: None or the
    lattice.reduction.BasisReduction whose T maps the sweep's codes z' to the stored z = T·z'.
    col_steps: None or α (K,) float16, column j's step s·α_j (not with a reduction).
    """

    W: torch.Tensor
    prep: PreparedHessian
    reduction: BasisReduction | None
    block_size: int
    col_steps: torch.Tensor | None = None   # (K,) float16 α, original column order (plain basis only)

    @classmethod
    def build(cls, Wd: torch.Tensor, prep: PreparedHessian, reduction: BasisReduction | None,
              block_size: int = 128, col_steps: torch.Tensor | None = None) -> "HptqSweep":
        """From the plain layer (prepare_layer's target Wd (N, K) and prep) and an optional reduction."""
        if reduction is None:
            return cls(Wd, prep, None, block_size, col_steps)
        if col_steps is not None:
            raise ValueError("col_steps: per-column steps need the plain basis (reduce='none')")
        K = Wd.shape[1]
        # H' is damped already (it is TᵀH_T T of the damped H): no second damping.
        reduced = prepare_hessian(reduction.hessian(prep.H), perm=torch.arange(K - 1, -1, -1), damping=0.0,
                                  dtype=prep.U.dtype, device=prep.U.device)
        return cls(reduction.weights(Wd), reduced, reduction, block_size)

    def codes_at(self, scale: float) -> tuple[torch.Tensor, torch.Tensor]:
        """(z (N, K) int32, q = s·α·z (N, K) in the sweep dtype), original column order."""
        N, K = self.W.shape
        if self.col_steps is None:
            scales, index = torch.full((N, 1), scale), torch.zeros(K, dtype=torch.int64)
        else:       # step k (column perm[k]) uses scale·α[perm[k]]
            scales, index = (scale * self.col_steps.double())[None, :].expand(N, K), self.prep.perm
        res = sweep(self.W, self.prep, scales, index, UnboundedGrid(), block_size=self.block_size)
        if self.reduction is None:
            return res.codes, res.q
        z = self.reduction.codes(res.codes)
        return z.to(torch.int32), z.to(res.q.dtype) * torch.tensor(scale, dtype=res.q.dtype)


def quantize_hptq(W: torch.Tensor, H: torch.Tensor, *, target_bits: float = 3.125,
                  ordering: str = "act", damping: float = 0.01, row_parallel_blocks: int = 1,
                  chunk_cols: int | None = None, G_cross: torch.Tensor | None = None,
                  steps: int = 40, tol: float = 0.01, block_size: int = 128,
                  dtype: torch.dtype = torch.float32, device=None, reduce: str = "none",
                  reduce_window: int | None = 256, col_steps: str = "none") -> FormatResult:
    """Quantize W (N, K) with Hessian H (K, K) to HPTQ (docs/format.md §3) at `target_bits` (a number,
    or an allocation.BitPlan holding this weight's target).

    The sweep runs in `ordering` on the unbounded grid (nothing clipped, so error ≤ bound =
    ¼ s² tr(D) per row). chunk_cols: None → kernels' choose_chunk_cols(K, row_parallel_blocks).
    tol: stop once |bits − target| ≤ tol (≤ 0.05). G_cross: (K, K) X̂ᵀX for the float target.
    reduce: 'none' | 'lll' | 'bkz-<B>': Babai on the basis reduced once per layer
    (lattice.reduction, on windows of `reduce_window` Babai-order columns, None = all K): the sweep
    runs on H' = TᵀH_T T with weights T⁻¹w and stores z = T·z'; D, tr(D) and the bound are the
    reduced basis's; search["reduction"] holds its statistics.
    col_steps: 'none' (one step) | 'ldl' | 'ldl<p>': per-column steps α (module docstring), stored
    as the `col_steps` tensor; the bound is then ¼ Σ_j D_jj α_j² s².
    """
    validate_common(W, H, G_cross, damping)
    N, K = W.shape
    target_bits = resolve_target(target_bits, W)
    chunk_cols = _check_hptq_args(K, target_bits, chunk_cols, row_parallel_blocks, steps, tol)
    power = parse_col_steps(col_steps)
    reduced = parse_method(reduce)[0] != "none"
    start = time.perf_counter()
    Wd, prep = prepare_layer(W, H, ordering=ordering, damping=damping, row_parallel_blocks=1,
                             G_cross=G_cross, dtype=dtype, device=device)
    reduction = reduce_basis(prep.H, prep.perm, reduce, window=reduce_window) if reduced else None
    alpha = column_steps(prep.D, prep.perm, prep.dead, power) if power else None
    layer = HptqSweep.build(Wd, prep, reduction, block_size, alpha)
    per_col = 1.0 if alpha is None else alpha.double().to(Wd.device)[None, :]
    max_abs = float(torch.maximum((Wd / per_col).abs().max(), layer.W.abs().max()))   # bounds the codes z and z'
    found = search_matrix_scale(layer.codes_at, max_abs, (N, K), target_bits=target_bits,
                                chunk_cols=chunk_cols, steps=steps, tol=tol, side_bits=_side_bits(alpha))
    S = torch.full((N, K), found["scale"], dtype=torch.float64)
    if alpha is not None:
        S = S * alpha.double()[None, :]
        found["q"] = dequantize_codes(found["z"].cpu(), found["scale"], alpha)    # the stored weight exactly
    q = found["q"].to(torch.float32)
    extra = {"reduce": reduce, "col_steps": alpha, "col_step_power": power,
             **({"col_step_spread": float(alpha.double().log2().std())} if alpha is not None else {}),
             **({"reduction": reduction.stats()} if reduced else {})}
    return _format_result("hptq", found, chunk_cols, achieved_error(Wd, q, prep.H),
                          babai_bound(S, layer.prep.perm, layer.prep.D),
                          {"seconds": time.perf_counter() - start, "trace_D": layer.prep.trace_D,
                           "damping_used": prep.damping, **extra})


def quantize_hrtn(W: torch.Tensor, H: torch.Tensor, *, target_bits: float = 3.125,
                  damping: float = 0.01, row_parallel_blocks: int = 1,
                  chunk_cols: int | None = None, steps: int = 40, tol: float = 0.01,
                  col_steps: str = "none", ordering: str = "act", **_ignored) -> FormatResult:
    """HPTQ's format and scale search with round-to-nearest codes (the control baseline).

    H (K, K) is used only to report the error (w − q)ᵀ(H + λI)(w − q) (there is no bound) and, with
    col_steps, for HPTQ's α (from the LDL diagonal in `ordering`, exactly as quantize_hptq).
    Other sweep-only options (G_cross, dtype, device, block_size) are accepted and ignored.
    """
    validate_common(W, H, None, damping)
    N, K = W.shape
    target_bits = resolve_target(target_bits, W)
    chunk_cols = _check_hptq_args(K, target_bits, chunk_cols, row_parallel_blocks, steps, tol)
    power = parse_col_steps(col_steps)
    start = time.perf_counter()
    W32 = W.to(torch.float32)
    grid = UnboundedGrid()
    alpha = None
    if power:
        _, prep = prepare_layer(W, H, ordering=ordering, damping=damping, row_parallel_blocks=1,
                                G_cross=None, dtype=torch.float64, device=None)
        alpha = column_steps(prep.D, prep.perm, prep.dead, power)
    per_col = torch.ones(K) if alpha is None else alpha.to(torch.float32)

    def codes_at(scale: float):
        z, _, _ = rtn_quantize(W32 / per_col, torch.full_like(W32, scale), grid)
        return z, dequantize_codes(z, scale, alpha)

    found = search_matrix_scale(codes_at, float((W32 / per_col).abs().max()), (N, K), target_bits=target_bits,
                                chunk_cols=chunk_cols, steps=steps, tol=tol, side_bits=_side_bits(alpha))
    Hd, _ = damp(fix_dead_inputs(H.to(torch.float64))[0], damping)
    return _format_result("hrtn", found, chunk_cols, achieved_error(W, found["q"], Hd), None,
                          {"seconds": time.perf_counter() - start, "col_steps": alpha, "col_step_power": power})
