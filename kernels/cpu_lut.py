"""The project's CPU kernel for the runtime layout: `babai_cpu::lut_linear` (kernels/cpu_lut.cpp).

One op per linear, bfloat16 activations: activation permutation, dense 4-, 5- or 8-bit codes turned
into exact bfloat16 values in registers (4/5 bits: a 16/32-entry lookup table) and multiplied with up to
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
BITS = (4, 5, 8)
FP16_TERMS = 3


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
        return False, "this CPU has no AVX-512 BF16 (the extension was built without it)"
    torch.library.register_fake("babai_cpu::lut_linear")(_fake)
    return True, None


def _fake(x, packed, bits, scales, group_size, perm, offsets, cols, vals, row_scale, bias):
    return x.new_empty(x.shape[0], packed.shape[0] * ROWS)


@dataclass
class LutPacked:
    """The op's resident tensors (block layout: kernels/cpu_lut.cpp) and its two integers."""

    packed: torch.Tensor      # (N/16, K/2, 16 | 20 | 32 bytes for 4 | 5 | 8 bits) uint8 (8 bits: int8)
    scales: torch.Tensor      # (N/16, K/G, 16) float16, or empty when all are 1 (G = K)
    offsets: torch.Tensor     # (N + 1,) int32, CSR residual
    cols: torch.Tensor        # (nnz,) int16 holding uint16 columns
    vals: torch.Tensor        # (nnz,) float16
    perm: torch.Tensor        # (K,) int64 or empty
    row_scale: torch.Tensor   # (N,) float32, (N/16,) when constant on blocks of 16 rows, or empty
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
    if k > 1 << 16:
        return f"keeps residual columns in 16 bits, K={k} is larger"
    if not torch.equal(layout.scales.half().float(), layout.scales.float()):
        return "keeps group scales in float16, and this layer's are not exact in it"
    if _fp16_terms(layout.residual.vals) is None:
        return f"keeps residual values as sums of ≤ {FP16_TERMS} float16 terms, and this layer's need more"
    return None


def _fp16_terms(vals: torch.Tensor) -> list[torch.Tensor] | None:
    """vals (nnz,) float32 as a sum of float16 tensors, each exact (SSQR outliers: one term; HPTQ's
    large integer codes beyond 2048: two), or None when FP16_TERMS terms do not suffice."""
    terms, rest = [], vals.float()
    for _ in range(FP16_TERMS):
        terms.append(rest.clamp(-65504, 65504).half())   # float16 max
        rest = rest - terms[-1].float()
        if not bool(rest.any()):
            return terms
    return None


def _csr_fp16(layout: DenseResidual) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The residual as CSR with uint16 columns (held as int16) and float16 values; an entry whose
    value needs several float16 terms appears once per term (same column)."""
    r = layout.residual
    n = r.offsets.numel() - 1
    rows = torch.repeat_interleave(torch.arange(n), (r.offsets[1:] - r.offsets[:-1]).long())
    terms = _fp16_terms(r.vals)
    keep = [torch.ones_like(rows, dtype=torch.bool)] + [t != 0 for t in terms[1:]]
    rows_all = torch.cat([rows[k] for k in keep])
    order = torch.sort(rows_all, stable=True).indices
    cols = torch.cat([r.cols[k] for k in keep])[order]
    vals = torch.cat([t[k] for t, k in zip(terms, keep)])[order]
    offsets = torch.zeros(n + 1, dtype=torch.int32)
    offsets[1:] = torch.bincount(rows_all, minlength=n).cumsum(0)
    return offsets, cols.to(torch.int32).to(torch.uint16).view(torch.int16).contiguous(), vals.contiguous()


def pack(layout: DenseResidual) -> LutPacked:
    """The op's resident tensors (see kernels/cpu_lut.cpp for the block layout). A layout whose rows
    share one scale keeps one group per row, none when it is 1 (HPTQ); a row scale constant on
    blocks of 16 rows (HPTQ: one per fused sibling) is kept once per block."""
    reason = check_layout(layout)
    if reason:
        raise ValueError(f"layout: {reason}")
    ok, why = load()
    if not ok:
        raise RuntimeError(f"babai CPU kernel: {why}")
    n, k = layout.shape
    group = k if layout.one_scale_per_row else layout.group_size
    scales = layout.scales[:, :1] if group == k else layout.scales
    scales = scales.new_empty(0) if group == k and bool((scales == 1).all()) else scales
    row_scale = layout.row_scale if layout.row_scale is not None else torch.empty(0)
    if row_scale.numel() and bool((row_scale.view(-1, ROWS) == row_scale.view(-1, ROWS)[:, :1]).all()):
        row_scale = row_scale[::ROWS].contiguous()
    blocks = n // ROWS
    pairs = layout.codes.view(blocks, ROWS, k // 2, 2).transpose(1, 2)   # block, pair, row, column
    if layout.bits == 8:
        packed = pairs.reshape(blocks, k // 2, 2 * ROWS).contiguous()       # (N/16, K/2, 32)
    else:
        u = pairs.to(torch.int64) + (1 << (layout.bits - 1))                 # in [0, 2^bits)
        packed = ((u[..., 0] & 15) | ((u[..., 1] & 15) << 4)).to(torch.uint8)  # (N/16, K/2, 16)
        if layout.bits == 5:                                                 # bit 2i + c of a 32-bit mask
            shifts = torch.arange(2 * ROWS, dtype=torch.int64).view(ROWS, 2)
            high = ((u >> 4) << shifts).sum((-2, -1))                        # (N/16, K/2)
            mask = high.to(torch.int32).view(torch.uint8).view(blocks, k // 2, 4)  # little-endian bytes
            packed = torch.cat([packed, mask], dim=-1)
        packed = packed.contiguous()
    scales = scales.half().view(blocks, ROWS, -1).transpose(1, 2).contiguous() if scales.numel() else scales.half()
    return LutPacked(packed, scales,
                     *_csr_fp16(layout),
                     layout.perm if layout.perm is not None else torch.empty(0, dtype=torch.int64),
                     row_scale, layout.bits, group)


def lut_linear(p: LutPacked, x: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """x (M, K) bfloat16 in original column order → (M, N) bfloat16."""
    return torch.ops.babai_cpu.lut_linear(x.contiguous(), p.packed, p.bits, p.scales, p.group_size, p.perm,
                                          p.offsets, p.cols, p.vals, p.row_scale,
                                          x.new_empty(0) if bias is None else bias)
