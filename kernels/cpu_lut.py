"""The project's CPU kernel for the runtime layout: `babai_cpu::lut_linear` (kernels/cpu_lut.cpp).

One op per linear, bfloat16 activations: activation permutation, dense 4- or 8-bit codes turned
into exact bfloat16 values in registers (4 bits: a 16-entry lookup table) and multiplied with up to
8 activation rows at once by VDPBF16PS, group scales, the CSR residual, row scale, bias and the
output cast. Nothing dense stays resident. Needs AVX-512 with BF16 and a C++ compiler:
the extension is built on first use (~1 min, cached by torch under ~/.cache/torch_extensions; set
TORCH_EXTENSIONS_DIR to move it); `scripts/setup.sh` builds it once.

    packed = pack(layout)            # resident tensors, built once at load
    y = lut_linear(packed, x, bias)  # x (M, K) in original order → (M, N) in x.dtype
"""
from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path

import torch

from babai_kernels.runtime import DenseResidual

SOURCE = Path(__file__).with_suffix(".cpp")
ROWS = 16          # output rows per block (one AVX-512 register of float32)
BITS = (4, 8)


@functools.cache
def load() -> tuple[bool, str | None]:
    """Build (first time) and load the extension; (ok, reason it cannot be used)."""
    try:
        from torch.utils import cpp_extension
        cpp_extension.load(name="babai_cpu_lut", sources=[str(SOURCE)], is_python_module=False,
                           extra_cflags=["-O3", "-march=native", "-fopenmp"], extra_ldflags=["-fopenmp"])
    except Exception as e:  # noqa: BLE001 — compiler missing or failing: the chooser reports it
        return False, f"could not build the C++ extension {SOURCE.name}: {str(e).strip().splitlines()[-1][:200]}"
    if not torch.ops.babai_cpu.supported():
        return False, "this CPU has no AVX-512 (the extension was built without it)"
    torch.library.register_fake("babai_cpu::lut_linear")(_fake)
    return True, None


def _fake(x, packed, bits, scales, group_size, perm, offsets, cols, vals, row_scale, bias):
    return x.new_empty(x.shape[0], packed.shape[0] * ROWS)


@dataclass
class LutPacked:
    """The op's resident tensors (block layout: kernels/cpu_lut.cpp) and its two integers."""

    packed: torch.Tensor      # 4 bits: (N/16, K/2, 16) uint8; 8 bits: (N/16, K/2, 32) int8
    scales: torch.Tensor      # (N/16, K/G, 16) float32
    offsets: torch.Tensor     # (N + 1,) int32, CSR residual
    cols: torch.Tensor        # (nnz,) int32
    vals: torch.Tensor        # (nnz,) float32
    perm: torch.Tensor        # (K,) int64 or empty
    row_scale: torch.Tensor   # (N,) float32 or empty
    bits: int
    group_size: int

    def tensors(self) -> list[torch.Tensor]:
        return [self.packed, self.scales, self.offsets, self.cols, self.vals, self.perm, self.row_scale]


def check_layout(layout: DenseResidual) -> str | None:
    """Why the kernel cannot serve `layout`, or None."""
    n, k = layout.shape
    if layout.bits not in BITS:
        return f"serves {list(BITS)}-bit dense codes, the layout has {layout.bits}"
    if n % ROWS:
        return f"needs N divisible by {ROWS}, the layer has N={n}"
    group = k if layout.one_scale_per_row else layout.group_size
    if group % 8 or k % group:
        return f"needs a group size that is a multiple of 8 dividing K={k}, the layout has {layout.group_size}"
    return None


def pack(layout: DenseResidual) -> LutPacked:
    """The op's resident tensors (see kernels/cpu_lut.cpp for the block layout); a layout whose
    rows share one scale keeps one group per row."""
    reason = check_layout(layout)
    if reason:
        raise ValueError(f"layout: {reason}")
    n, k = layout.shape
    group = k if layout.one_scale_per_row else layout.group_size
    scales = layout.scales[:, :1] if group == k else layout.scales
    blocks = n // ROWS
    pairs = layout.codes.view(blocks, ROWS, k // 2, 2).transpose(1, 2)   # block, pair, row, column
    if layout.bits == 4:
        u = (pairs.to(torch.int16) + 8).to(torch.uint8)                     # in [0, 16)
        packed = (u[..., 0] | (u[..., 1] << 4)).contiguous()                # (N/16, K/2, 16)
    else:
        packed = pairs.reshape(blocks, k // 2, 2 * ROWS).contiguous()       # (N/16, K/2, 32)
    r = layout.residual
    return LutPacked(packed, scales.float().view(blocks, ROWS, -1).transpose(1, 2).contiguous(),
                     r.offsets.contiguous(), r.cols.contiguous(), r.vals.contiguous(),
                     layout.perm if layout.perm is not None else torch.empty(0, dtype=torch.int64),
                     layout.row_scale if layout.row_scale is not None else torch.empty(0),
                     layout.bits, group)


def lut_linear(p: LutPacked, x: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """x (M, K) bfloat16 in original column order → (M, N) bfloat16."""
    return torch.ops.babai_cpu.lut_linear(x.contiguous(), p.packed, p.bits, p.scales, p.group_size, p.perm,
                                          p.offsets, p.cols, p.vals, p.row_scale,
                                          x.new_empty(0) if bias is None else bias)
