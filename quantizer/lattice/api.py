"""Single-layer quantization API: W (N, K), H = XᵀX (K, K) → integer codes on a lattice grid.

Used by the formats (SSQR / HPTQ searches) and the model driver. For repeated sweeps with
different scales on one layer, call `prepare_hessian` once and then `sweep` (see `quantize_layer`'s
body for the exact sequence).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from .bound import achieved_error, babai_bound
from .grids import GRIDS, make_grid
from .ordering import METHODS
from .qronos import float_target_weights
from .scales import coordinate_scales, group_scales, step_group_index
from .sweep import PreparedHessian, prepare_hessian, sweep


@dataclass
class LayerResult:
    """Result of `quantize_layer` (all (N, K) tensors in ORIGINAL column order, on CPU).

    codes: int32 integer codes z (0 at outliers). q: float32 dequantized weight s·z (+ outliers).
    outlier_mask: bool. perm: (K,) int64 GPTQ order (perm[0] quantized first).
    scales: (N, n_groups) float32 as used (n_groups = K/G, or 1 for a per-matrix scale).
    group_index: (K,) int64 scale column used at quantization step k.
    D: (K,) float64 LDL diagonal in quantization order; trace_D = Σ D.
    error: (N,) float64 (w − q)ᵀH(w − q) on the damped H (w = the float target ŵ when G_cross
    is given). bound: (N,) float64 Babai bound ¼ Σ_k D_k s_{n,perm[k]}² (valid when unclipped).
    damping_used: relative damping after any Cholesky retries.
    """

    codes: torch.Tensor
    q: torch.Tensor
    outlier_mask: torch.Tensor
    perm: torch.Tensor
    scales: torch.Tensor
    group_index: torch.Tensor
    D: torch.Tensor
    trace_D: float
    error: torch.Tensor
    bound: torch.Tensor
    damping_used: float


def validate_layer(W, H, bits, group_size, G_cross=None) -> None:
    """Raise ValueError naming the argument for malformed single-layer inputs."""
    for name, t in (("W", W), ("H", H), ("G_cross", G_cross)):
        if t is None and name == "G_cross":
            continue
        if not isinstance(t, torch.Tensor) or not t.is_floating_point():
            raise ValueError(f"{name}: expected a floating-point torch.Tensor")
        if t.dim() != 2:
            raise ValueError(f"{name}: expected 2 dims, got shape {tuple(t.shape)}")
        if not torch.isfinite(t).all():
            raise ValueError(f"{name}: contains non-finite values (nan/inf)")
    K = W.shape[1]
    if tuple(H.shape) != (K, K):
        raise ValueError(f"H: expected shape ({K}, {K}) for W of shape {tuple(W.shape)}, got {tuple(H.shape)}")
    if G_cross is not None and tuple(G_cross.shape) != (K, K):
        raise ValueError(f"G_cross: expected shape ({K}, {K}), got {tuple(G_cross.shape)}")
    if bits is not None and (not isinstance(bits, int) or not 2 <= bits <= 8):
        raise ValueError(f"bits: expected an integer in 2..8, got {bits!r}")
    if group_size is not None and (not isinstance(group_size, int) or group_size <= 0 or K % group_size):
        raise ValueError(f"group_size: {group_size!r} must be a positive divisor of K={K} (or None)")


def sweep_target(W: torch.Tensor, prep: PreparedHessian,
                 G_cross: torch.Tensor | None = None) -> torch.Tensor:
    """The weights the sweep rounds: (N, K) float64 on prep's device.

    W with dead inputs zeroed (GPTQ's rule), or the Qronos float target Ŵ = H⁻¹(G + λI)W when
    G_cross (K, K) = X̂ᵀX is given.
    """
    dev = prep.U.device
    Wd = W.to(device=dev, dtype=torch.float64)
    Wd[:, prep.dead.to(dev)] = 0
    if G_cross is not None:
        Wd = float_target_weights(Wd, prep.H, G_cross.to(dev), prep.lam)
        Wd[:, prep.dead.to(dev)] = 0
    return Wd


def quantize_layer(W: torch.Tensor, H: torch.Tensor, *, bits: int | None, group_size: int | None,
                   grid: str = "clip", scale_method: str = "mse", scales: torch.Tensor | None = None,
                   ordering: str = "act", perm: torch.Tensor | None = None,
                   groups_in: str = "quant_order", damping: float = 0.01,
                   G_cross: torch.Tensor | None = None, block_size: int = 128,
                   dtype: torch.dtype = torch.float32,
                   device: torch.device | str | None = None) -> LayerResult:
    """Quantize one linear layer with GPTQ ≡ Babai (back-to-front on reverse(perm)).

    W: (N, K) float weight (rows = output channels). H: (K, K) float XᵀX (undamped; damping =
    `damping`·mean diag, raised automatically if Cholesky fails).
    bits: 2..8 inlier bits (grid 'clip'/'overflow'; for 'unbounded' only used to compute default
    scales and may be None when `scales` is given). group_size: columns per scale group (divides
    K) or None for one scale for the whole matrix (HPTQ).
    grid: 'clip' (GPTQ/RTN), 'unbounded' (HPTQ), 'overflow' (SSQR: out-of-range → float16 outlier).
    scales: optional precomputed (N or 1, n_groups) scales, group g = columns of group g in the
    order chosen by `groups_in` ('quant_order': steps [gG, (g+1)G) of perm; 'original': original
    columns [gG, (g+1)G)); otherwise computed by `scale_method` ('mse' | 'absmax', fp16-rounded).
    ordering: 'act' | 'min-pivot' | 'identity', overridden by an explicit perm (K,).
    G_cross: (K, K) X̂ᵀX for the Qronos-style float target (H is then X̂ᵀX̂).
    dtype/device: sweep precision (float32 default, float64 option) and device.
    """
    validate_layer(W, H, bits, group_size, G_cross)
    if grid not in GRIDS:
        raise ValueError(f"grid: unknown grid {grid!r}, expected one of {tuple(GRIDS)}")
    if grid != "unbounded" and bits is None:
        raise ValueError(f"bits: required for grid {grid!r}")
    if scales is None and bits is None:
        raise ValueError("bits: required to compute scales (or pass scales=)")
    if perm is None and ordering not in METHODS:
        raise ValueError(f"ordering: unknown method {ordering!r}, expected one of {METHODS}")
    if groups_in not in ("quant_order", "original"):
        raise ValueError(f"groups_in: expected 'quant_order' or 'original', got {groups_in!r}")
    N, K = W.shape
    if perm is not None:
        perm = perm.to(torch.int64)
        if perm.shape != (K,) or not torch.equal(torch.sort(perm.cpu()).values, torch.arange(K)):
            raise ValueError(f"perm: expected a permutation of 0..{K - 1}")
    n_groups = 1 if group_size is None else K // group_size
    if scales is not None:
        if not isinstance(scales, torch.Tensor) or scales.dim() != 2 or scales.shape[1] != n_groups \
                or scales.shape[0] not in (1, N):
            raise ValueError(f"scales: expected shape ({N}, {n_groups}), got "
                             f"{tuple(scales.shape) if isinstance(scales, torch.Tensor) else type(scales)}")
        if not (torch.isfinite(scales).all() and (scales > 0).all()):
            raise ValueError("scales: must be finite and positive")

    prep: PreparedHessian = prepare_hessian(H, ordering=ordering, perm=perm, damping=damping,
                                            dtype=dtype, device=device)
    dev = prep.U.device
    Wd = sweep_target(W, prep, G_cross)
    gidx = step_group_index(prep.perm, group_size, groups_in)
    if scales is None:
        order = prep.perm if groups_in == "quant_order" else None
        scales = group_scales(Wd, bits, group_size, order=order, method=scale_method)
    scales = scales.to(device=dev, dtype=torch.float32).expand(N, n_groups).contiguous()

    res = sweep(Wd, prep, scales, gidx, make_grid(grid, bits), block_size=block_size)
    S = coordinate_scales(scales, prep.perm, gidx)
    q = res.q.to(torch.float32)
    return LayerResult(
        codes=res.codes.cpu(), q=q.cpu(), outlier_mask=res.outlier.cpu(), perm=prep.perm.cpu(),
        scales=scales.cpu(), group_index=gidx.cpu(), D=prep.D.double().cpu(), trace_D=prep.trace_D,
        error=achieved_error(Wd, q, prep.H).cpu(), bound=babai_bound(S, prep.perm, prep.D).cpu(),
        damping_used=prep.damping)
