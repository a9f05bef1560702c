"""SSQR linear layer entry points: `prepare_ssqr` once per layer, `ssqr_linear` per forward.

`ssqr_linear` runs the Triton kernel (kernels/ssqr/matmul.py; CUDA, or CPU under
TRITON_INTERPRET=1) on float16/bfloat16 activations and refuses anything else (no dense fallback:
the kernel chooser, babai_kernels.chooser, decides what serves a layer Triton cannot). It runs
as the opaque custom op `babai::ssqr_linear` (with a fake implementation) so torch.compile and
CUDA graphs do not trace into it. Per call: one gather x[:, perm] (when perm is not the
identity) and one kernel launch.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from babai_kernels.common import check_tensor, use_triton
from babai_kernels.ssqr.pack import check_outlier_layout, check_perm, ssqr_meta, unpack_codes
from babai_kernels.ssqr.tiles import repack_codes, unpack_kernel_codes
from babai_kernels.ssqr.tuning import choose_config, m_bucket

TRITON_DTYPES = (torch.float16, torch.bfloat16)
LOCKS_PER_16_COLUMNS = 4   # split-K counters: one per (N tile, M tile), N tiles ≥ 16 wide, ≤ 4 M tiles


@dataclass(frozen=True)
class PreparedSSQR:
    """Kernel layout of one layer (all on one device, contiguous).

    qcodes int32 (K*b/32, N): codes in the kernel layout (tiles.repack_codes); scales float16
    (K/G, N), perm int32 (K,) as stored; outlier_cols int16 (cap, N) stored column of each slot,
    outlier_vals float16 (cap, N) (padding slots: column 0, value 0); locks int32 split-K
    counters, all 0 between calls (the kernel resets them).
    """
    qcodes: torch.Tensor
    scales: torch.Tensor
    perm: torch.Tensor
    outlier_cols: torch.Tensor
    outlier_vals: torch.Tensor
    locks: torch.Tensor
    bits: int
    group_size: int
    has_perm: bool
    has_outliers: bool

    @property
    def n(self) -> int:
        return self.qcodes.shape[1]

    @property
    def k(self) -> int:
        return self.perm.shape[0]

    @property
    def cap(self) -> int:
        return self.outlier_cols.shape[0]


def prepare_ssqr(tensors: dict[str, torch.Tensor], device: torch.device | str) -> PreparedSSQR:
    """Validate a layer's tensors (docs/format.md §2) and build its kernel layout on `device`."""
    n, k, bits, group = ssqr_meta(tensors)
    perm = tensors["perm"].cpu()
    check_perm("perm", perm, k)
    cols, vals = tensors["outlier_cols"].cpu(), tensors["outlier_vals"].cpu()
    check_outlier_layout(cols, vals, k)
    device = torch.device(device)
    z = unpack_codes(tensors["qweight"].to(device), bits, k)
    return PreparedSSQR(
        qcodes=repack_codes(z, bits),
        scales=tensors["scales"].to(device).contiguous(),
        perm=tensors["perm"].to(device).contiguous(),
        outlier_cols=cols.T.contiguous().to(device),
        outlier_vals=vals.T.contiguous().to(device),
        locks=torch.zeros(LOCKS_PER_16_COLUMNS * -(-n // 16), dtype=torch.int32, device=device),
        bits=bits, group_size=group,
        has_perm=not torch.equal(perm, torch.arange(k, dtype=perm.dtype)),
        has_outliers=bool((vals != 0).any()))


def run_kernel(x: torch.Tensor, p: PreparedSSQR, bias: torch.Tensor | None, cfg: dict) -> torch.Tensor:
    """Gather x by perm and launch the kernel with config cfg; x (M, K) contiguous -> (M, N) x.dtype."""
    from babai_kernels.ssqr.matmul import launch

    xp = x.index_select(1, p.perm) if p.has_perm else x
    return launch(xp, p, bias, cfg)


def _linear_triton(x: torch.Tensor, p: PreparedSSQR, bias: torch.Tensor | None) -> torch.Tensor:
    m = x.shape[0]
    key = f"N{p.n}:K{p.k}:b{p.bits}:G{p.group_size}:M{m_bucket(m)}:{x.dtype}:" \
          f"bias{bias is not None}:out{p.has_outliers}"
    cfg = choose_config(key, m, p.n, p.k, x.device, lambda c: run_kernel(x, p, bias, c))
    return run_kernel(x, p, bias, cfg)


@torch.library.custom_op("babai::ssqr_linear", mutates_args=())
def _ssqr_linear_op(x: torch.Tensor, qcodes: torch.Tensor, scales: torch.Tensor,
                    perm: torch.Tensor, outlier_cols: torch.Tensor, outlier_vals: torch.Tensor,
                    locks: torch.Tensor, bias: torch.Tensor | None, bits: int, group_size: int,
                    has_perm: bool, has_outliers: bool) -> torch.Tensor:
    # `locks` is written during the call but always left all-zero: no net mutation to declare.
    p = PreparedSSQR(qcodes, scales, perm, outlier_cols, outlier_vals, locks, bits, group_size,
                     has_perm, has_outliers)
    if not use_triton(x.device):
        raise ValueError(f"x: Triton cannot run on {x.device} (CUDA, or CPU with TRITON_INTERPRET=1)")
    return _linear_triton(x, p, bias)


@_ssqr_linear_op.register_fake
def _(x, qcodes, scales, perm, outlier_cols, outlier_vals, locks, bias, bits, group_size,
      has_perm, has_outliers):
    return x.new_empty((x.shape[0], qcodes.shape[1]))


def ssqr_linear(x: torch.Tensor, prepared: PreparedSSQR,
                bias: torch.Tensor | None = None) -> torch.Tensor:
    """y = x Wᵀ (+ bias) for x (..., K) float16/bfloat16 contiguous -> (..., N) in x.dtype."""
    p = prepared
    check_tensor("x", x, dtype=TRITON_DTYPES, device=p.qcodes.device, contiguous=True)
    if x.dim() < 1 or x.shape[-1] != p.k:
        raise ValueError(f"x: last dim must be K={p.k}, got shape {tuple(x.shape)}")
    if bias is not None:
        check_tensor("bias", bias, dtype=TRITON_DTYPES, shape=(p.n,), device=x.device,
                     contiguous=True)
    x2d = x.reshape(-1, p.k)
    if x2d.shape[0] == 0:
        return x.new_empty((*x.shape[:-1], p.n))
    y = torch.ops.babai.ssqr_linear(x2d, p.qcodes, p.scales, p.perm, p.outlier_cols,
                                    p.outlier_vals, p.locks, bias, p.bits, p.group_size,
                                    p.has_perm, p.has_outliers)
    return y.reshape(*x.shape[:-1], p.n)
