"""SSQR linear layer entry points: `prepare_ssqr` once per layer, `ssqr_linear` per forward.

`ssqr_linear` dispatches to Triton (CUDA, or CPU under TRITON_INTERPRET=1) for fp16/bf16
activations — GEMV path for M ≤ tuning.GEMV_MAX_M, tensor-core GEMM path above — and to a torch
implementation otherwise. It runs as the opaque custom op `babai::ssqr_linear` (with a fake
implementation) so torch.compile and CUDA graphs do not trace into it.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from babai_kernels.common import check_tensor, use_triton
from babai_kernels.ssqr.pack import check_outlier_layout, check_perm, ssqr_meta, unpack_codes
from babai_kernels.ssqr.tuning import GEMV_MAX_M, choose_config, m_bucket

TRITON_DTYPES = (torch.float16, torch.bfloat16)
ACT_DTYPES = TRITON_DTYPES + (torch.float32,)


@dataclass(frozen=True)
class PreparedSSQR:
    """Kernel layout of one layer (all on one device, contiguous).

    qweight int32 (K*b/32, N), scales float16 (K/G, N), perm int32 (K,) as stored;
    outlier_src int32 (cap, N): original input column perm[outlier_cols] of each slot;
    outlier_vals float16 (cap, N) (padding slots: value 0).
    """
    qweight: torch.Tensor
    scales: torch.Tensor
    perm: torch.Tensor
    outlier_src: torch.Tensor
    outlier_vals: torch.Tensor
    bits: int
    group_size: int
    has_perm: bool
    has_outliers: bool

    @property
    def n(self) -> int:
        return self.qweight.shape[1]

    @property
    def k(self) -> int:
        return self.perm.shape[0]

    @property
    def cap(self) -> int:
        return self.outlier_src.shape[0]


def prepare_ssqr(tensors: dict[str, torch.Tensor], device: torch.device | str) -> PreparedSSQR:
    """Validate a layer's tensors (docs/format.md §2) and build its kernel layout on `device`."""
    _, k, bits, group = ssqr_meta(tensors)
    perm = tensors["perm"].cpu()
    check_perm("perm", perm, k)
    cols, vals = tensors["outlier_cols"].cpu(), tensors["outlier_vals"].cpu()
    check_outlier_layout(cols, vals, k)
    src = perm[cols.long()].T.contiguous()
    device = torch.device(device)
    return PreparedSSQR(
        qweight=tensors["qweight"].to(device).contiguous(),
        scales=tensors["scales"].to(device).contiguous(),
        perm=tensors["perm"].to(device).contiguous(),
        outlier_src=src.to(device),
        outlier_vals=vals.T.contiguous().to(device),
        bits=bits, group_size=group,
        has_perm=not torch.equal(perm, torch.arange(k, dtype=perm.dtype)),
        has_outliers=bool((vals != 0).any()))


def _linear_torch(x: torch.Tensor, p: PreparedSSQR, bias: torch.Tensor | None) -> torch.Tensor:
    """Torch path from the prepared layout: dense float32 weight, x (M, K) -> (M, N) in x.dtype."""
    stored = unpack_codes(p.qweight, p.bits, p.k).float() \
        * p.scales.float().repeat_interleave(p.group_size, dim=0).T
    weight = torch.empty_like(stored)
    weight[:, p.perm.long()] = stored
    weight.scatter_add_(1, p.outlier_src.T.long(), p.outlier_vals.T.float())
    y = x.float() @ weight.T
    if bias is not None:
        y = y + bias.float()
    return y.to(x.dtype)


def run_kernel(x: torch.Tensor, p: PreparedSSQR, bias: torch.Tensor | None, path: str,
               cfg: dict) -> torch.Tensor:
    """One Triton launch sequence with an explicit config; x (M, K) contiguous -> (M, N) x.dtype."""
    from babai_kernels.ssqr.gemm import launch_gemm
    from babai_kernels.ssqr.gemv import launch_gemv
    from babai_kernels.ssqr.outliers import add_outliers

    fuse = p.has_outliers and cfg["FUSE_OUTLIERS"]
    companion = p.has_outliers and not cfg["FUSE_OUTLIERS"]
    atomic = companion or cfg["SPLIT_K"] > 1
    cfg = dict(cfg, BLOCK_K=math.gcd(cfg["BLOCK_K"], p.group_size))
    m = x.shape[0]
    out = (torch.zeros(m, p.n, dtype=torch.float32, device=x.device) if atomic
           else torch.empty(m, p.n, dtype=x.dtype, device=x.device))
    launch = launch_gemv if path == "gemv" else launch_gemm
    launch(x, p, bias, out, cfg, fuse, atomic)
    if companion:
        add_outliers(x, p.outlier_src, p.outlier_vals, out)
    return out.to(x.dtype) if atomic else out


def _linear_triton(x: torch.Tensor, p: PreparedSSQR, bias: torch.Tensor | None) -> torch.Tensor:
    m = x.shape[0]
    path = "gemv" if m <= GEMV_MAX_M else "gemm"
    key = f"{path}:N{p.n}:K{p.k}:b{p.bits}:G{p.group_size}:M{m_bucket(m)}:{x.dtype}:" \
          f"bias{bias is not None}:out{p.has_outliers}"
    cfg = choose_config(path, key, m, x.device, lambda c: run_kernel(x, p, bias, path, c))
    return run_kernel(x, p, bias, path, cfg)


@torch.library.custom_op("babai::ssqr_linear", mutates_args=())
def _ssqr_linear_op(x: torch.Tensor, qweight: torch.Tensor, scales: torch.Tensor,
                    perm: torch.Tensor, outlier_src: torch.Tensor, outlier_vals: torch.Tensor,
                    bias: torch.Tensor | None, bits: int, group_size: int, has_perm: bool,
                    has_outliers: bool) -> torch.Tensor:
    p = PreparedSSQR(qweight, scales, perm, outlier_src, outlier_vals, bits, group_size,
                     has_perm, has_outliers)
    if use_triton(x.device) and x.dtype in TRITON_DTYPES:
        return _linear_triton(x, p, bias)
    return _linear_torch(x, p, bias)


@_ssqr_linear_op.register_fake
def _(x, qweight, scales, perm, outlier_src, outlier_vals, bias, bits, group_size, has_perm,
      has_outliers):
    return x.new_empty((x.shape[0], qweight.shape[1]))


def ssqr_linear(x: torch.Tensor, prepared: PreparedSSQR,
                bias: torch.Tensor | None = None) -> torch.Tensor:
    """y = x Wᵀ (+ bias) for x (..., K) float16/bfloat16/float32 contiguous -> (..., N) in x.dtype."""
    p = prepared
    check_tensor("x", x, dtype=ACT_DTYPES, device=p.qweight.device, contiguous=True)
    if x.dim() < 1 or x.shape[-1] != p.k:
        raise ValueError(f"x: last dim must be K={p.k}, got shape {tuple(x.shape)}")
    if bias is not None:
        check_tensor("bias", bias, dtype=ACT_DTYPES, shape=(p.n,), device=x.device,
                     contiguous=True)
    x2d = x.reshape(-1, p.k)
    if x2d.shape[0] == 0:
        return x.new_empty((*x.shape[:-1], p.n))
    y = torch.ops.babai.ssqr_linear(x2d, p.qweight, p.scales, p.perm, p.outlier_src,
                                    p.outlier_vals, bias, p.bits, p.group_size, p.has_perm,
                                    p.has_outliers)
    return y.reshape(*x.shape[:-1], p.n)
