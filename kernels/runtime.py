"""The serving layout of every babai linear: dense b-bit codes + a sparse residual.

    y = (((x ⊙ col_scale)[..., perm] @ (S ⊙ Z + R)ᵀ) · row_scale) (+ bias)

Z (N, K) are signed dense codes within `bits` (stored order), S their group scales (stored order,
G columns per group), R a sparse residual holding what the dense codes cannot (SSQR: the outlier
values; HPTQ: the codes outside the dense range, z − clamp(z)), and row_scale a per-row factor
applied after the matmul (HPTQ: the matrix scale of each fused sibling, so S is all ones and the
dense part is exact in any float type), and col_scale a per-input-column factor applied to x before
the matmul (HPTQ version 2's `col_steps` α: w_nk = s·α_k·z_nk, so y = (Z·(α ⊙ x))·s; one elementwise
product per call, scale_input). Both formats map onto it losslessly: `dequantize(layout)`
equals the format's reference dequantizer bit for bit. A kernel takes this layout, keeps its own
resident form and drops the rest (vllm_babai/kernels.py).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from babai_kernels.hptq.pack import decode_hptq, hptq_meta
from babai_kernels.contract import MAX_K
from babai_kernels.ssqr.pack import pack_ssqr, ssqr_meta, unpack_ssqr

DENSE_BITS = (4, 5, 8)       # dense widths some kernel serves (2/3-bit codes are widened to 4)
RESIDUAL_ENTRY_BYTES = 4     # one CSR entry as the CPU kernel keeps it: column uint16 + value float16
WIDTH_ROWS = 32              # HPTQ rows that share one dense width (two 16-row blocks of the CPU kernel)
# Time of the CPU kernel (babai_cpu::lut_linear, 1 thread, M = 1, AVX-512 BF16, 960x576) per dense
# weight by width and per residual entry, ns: measured on the AMD EPYC dev box (benchmarks/linear_cpu.py,
# section "dense width cost"). An entry costs ~30 5-bit weights of time, where its 4 bytes are 6.4
# weights of bandwidth: widths chosen by bytes left HPTQ-4.3's fused qkv at 5 bits with 5 % residual.
# Since 8-bit blocks run an avx2 path at 1-2 rows of x (float32 then, int16 pairs since), 8 bits cost less
# than 5: rows that need more than 4 bits take 8 (whole model, M = 1, weights streaming: HPTQ-4.3 8.32 →
# 7.12 ms a step).
CPU_NS_PER_WEIGHT = {4: 0.045, 5: 0.055, 8: 0.050}
CPU_NS_PER_ENTRY = 1.66
# (ns per weight by width, ns per entry) per variant of the kernel (cpu_lut.isa()); the AVX2 + FMA + F16C
# variant measured the same way, forced on the same box: it multiplies int16 pairs (VPMADDWD), where 5 bits
# cost 1.6x 4 bits (the high bits take their own compares) and 8 bits least (one sign extension per 16
# weights; 4 bits 1.06x), so its rows take 8 bits: 8.1 resident bits per weight on hptq-3.3 and 4.3 (with
# its float32 decode, 0.063 / 0.107 / 0.052 ns and 1.69, the whole model's steps of linears, weights
# streaming, ran 1.21x / 1.08x faster at M = 1 / 8 than the 4/8-bit mix of 5.1 bits).
CPU_COSTS = {"avx512": (CPU_NS_PER_WEIGHT, CPU_NS_PER_ENTRY), "avx2": ({4: 0.040, 5: 0.063, 8: 0.0375}, 1.65)}


@dataclass
class Residual:
    """Sparse (N, K) float32 matrix in stored column order, CSR: row n holds vals[e] at column
    cols[e] for e in [offsets[n], offsets[n+1]).

    CSR because its product is one fused PyTorch op (`embedding_bag` with per-sample weights, over
    xᵀ as the table), ~3x faster than a gather-multiply-sum over an ELL layout at decode sizes here,
    and it has no padding (HPTQ's rows differ widely in how many codes leave the dense range)."""

    offsets: torch.Tensor    # (N + 1,) int32
    cols: torch.Tensor       # (nnz,) int32
    vals: torch.Tensor       # (nnz,) float32

    @classmethod
    def from_dense(cls, r: torch.Tensor) -> "Residual":
        nonzero = r != 0
        offsets = torch.zeros(r.shape[0] + 1, dtype=torch.int32)
        offsets[1:] = nonzero.sum(1).cumsum(0)
        return cls(offsets, nonzero.nonzero()[:, 1].to(torch.int32), r[nonzero].float())

    @property
    def nnz(self) -> int:
        return self.vals.numel()

    def to_dense(self, k: int) -> torch.Tensor:
        n = self.offsets.numel() - 1
        rows = torch.repeat_interleave(torch.arange(n), (self.offsets[1:] - self.offsets[:-1]).long())
        out = torch.zeros(n, k, dtype=torch.float32)
        out[rows, self.cols.long()] = self.vals
        return out

    def parts(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None:
        """(offsets, cols, vals) for `add_residual`, or None when there is nothing to add."""
        return (self.offsets, self.cols, self.vals) if self.nnz else None


def add_residual(y: torch.Tensor, residual, x: torch.Tensor) -> torch.Tensor:
    """y (M, N) float32 + x (M, K) @ Rᵀ for `residual` = Residual.parts() (None: nothing to add);
    x in stored order. The table xᵀ must have plain strides (M = 1 views are slow in embedding_bag)."""
    if residual is None:
        return y
    offsets, cols, vals = residual
    table = x.t().to(torch.float32, memory_format=torch.contiguous_format)
    return y + torch.nn.functional.embedding_bag(cols, table, offsets[:-1], mode="sum", per_sample_weights=vals).t()


@dataclass
class DenseResidual:
    """One linear (possibly fused siblings) in the runtime layout; see the module docstring."""

    codes: torch.Tensor              # (N, K) int8, within [-2^(bits-1), 2^(bits-1))
    bits: int
    scales: torch.Tensor             # (N, K/G) float32
    residual: Residual
    perm: torch.Tensor | None        # (K,) int64, stored column j = original column perm[j]
    row_scale: torch.Tensor | None   # (N,) float32
    col_scale: torch.Tensor | None = None   # (K,) float32, original column order (HPTQ col_steps)
    # (rows, bits) runs from the top row, each run's codes within its own width (≤ bits; HPTQ rows
    # whose codes need different ranges); None: every row within `bits`
    widths: tuple[tuple[int, int], ...] | None = None

    @property
    def shape(self) -> tuple[int, int]:
        return tuple(self.codes.shape)

    @property
    def runs(self) -> tuple[tuple[int, int], ...]:
        """(rows, bits) runs from the top row: `widths`, or one run of every row at `bits`."""
        return self.widths or ((self.shape[0], self.bits),)

    @property
    def dense_bytes(self) -> float:
        """Bytes of the dense codes at their widths: Σ over runs of rows · K · bits / 8."""
        return sum(rows * self.shape[1] * bits / 8 for rows, bits in self.runs)

    @property
    def group_size(self) -> int:
        return self.codes.shape[1] // self.scales.shape[1]

    @property
    def one_scale_per_row(self) -> bool:
        """Every group scale of a row is the same (HPTQ: all ones), so any group size will do."""
        return bool((self.scales == self.scales[:, :1]).all())


def from_ssqr(tensors: dict[str, torch.Tensor], unpacked: tuple | None = None) -> DenseResidual:
    """SSQR tensors (docs/format.md §2, possibly fused siblings sharing perm) → the runtime layout:
    codes as stored, fp16 scales and outlier values as float32 (exact). unpacked: unpack_ssqr(tensors)
    when the caller has it already."""
    _, _, bits, _ = ssqr_meta(tensors)
    z, scales, perm, outliers = unpacked if unpacked is not None else unpack_ssqr(tensors)
    identity = bool((perm == torch.arange(perm.numel(), dtype=perm.dtype)).all())
    return DenseResidual(z.to(torch.int8), max(bits, 4), scales.float(), Residual.from_dense(outliers),
                         None if identity else perm.long(), None)


def hptq_dense_widths(z: torch.Tensor, isa: str = "avx512") -> tuple[tuple[int, int], ...]:
    """Dense widths for integer codes z (N, K): (rows, bits) runs from the top row, one width (of
    DENSE_BITS) per WIDTH_ROWS rows, the one the CPU kernel's variant `isa` serves fastest: its
    CPU_COSTS ns per weight of width b plus ns per code outside the b-bit range (a residual entry
    costs far more time than its 4 bytes; see CPU_NS_PER_WEIGHT)."""
    if isa not in CPU_COSTS:
        raise ValueError(f"isa: no measured CPU costs for {isa!r}, only for {list(CPU_COSTS)}")
    ns_weight, ns_entry = CPU_COSTS[isa]
    runs: list[list[int]] = []
    for r0 in range(0, z.shape[0], WIDTH_ROWS):
        rows = z[r0:r0 + WIDTH_ROWS]
        outside = {b: int(((rows < -(1 << (b - 1))) | (rows > (1 << (b - 1)) - 1)).sum()) for b in DENSE_BITS}
        bits = min(DENSE_BITS, key=lambda b: rows.numel() * ns_weight[b] + outside[b] * ns_entry)
        if runs and runs[-1][1] == bits:
            runs[-1][0] += rows.shape[0]
        else:
            runs.append([rows.shape[0], bits])
    return tuple((n, b) for n, b in runs)


def from_hptq(parts: list[dict[str, torch.Tensor]], in_features: int, bits: int | None = None,
              group_size: int = 32, isa: str = "avx512") -> DenseResidual:
    """HPTQ tensors of fused siblings (each with its own scale and code table, docs/format.md §3)
    → one runtime layout with their rows stacked: Z = clamp(z) to `bits` (default: each group of
    WIDTH_ROWS rows its own width, `hptq_dense_widths` by the costs of CPU kernel variant `isa`),
    R = z − Z, S = 1, row_scale = each sibling's scale."""
    codes = [decode_hptq(tensors, in_features) for tensors in parts]
    return from_hptq_codes(codes, parts, in_features, bits, group_size, isa)


def from_hptq_codes(codes: list[torch.Tensor], parts: list[dict[str, torch.Tensor]], in_features: int,
                    bits: int | None = None, group_size: int = 32, isa: str = "avx512") -> DenseResidual:
    """`from_hptq` with each part's codes (N_part, K) already decoded (decode_hptq)."""
    row_scales = []
    for tensors in parts:
        meta = hptq_meta(tensors, in_features)
        row_scales.append(torch.full((meta["out_features"],), meta["scale"], dtype=torch.float32))
    col_scale = hptq_col_scale(parts)
    z = torch.cat(codes)
    if bits is not None and bits not in DENSE_BITS:
        raise ValueError(f"bits: dense width {bits} not in {list(DENSE_BITS)}")
    widths = ((z.shape[0], bits),) if bits else hptq_dense_widths(z, isa)
    row_bits = torch.cat([torch.full((n, 1), b) for n, b in widths])
    dense = z.clamp(-(1 << (row_bits - 1)), (1 << (row_bits - 1)) - 1)
    if in_features % group_size:
        raise ValueError(f"group_size: {group_size} does not divide K={in_features}")
    scales = torch.ones(z.shape[0], in_features // group_size)
    return DenseResidual(dense.to(torch.int8), max(b for _, b in widths), scales,
                         Residual.from_dense((z - dense).float()), None, torch.cat(row_scales), col_scale,
                         widths if len(widths) > 1 else None)


def hptq_col_scale(parts: list[dict[str, torch.Tensor]]) -> torch.Tensor | None:
    """The fused siblings' shared per-column steps α (K,) float32 (CPU), or None when no part has
    `col_steps`. Siblings share the input Hessian, hence α: ValueError unless all parts carry the
    same one (as SSQR's shared perm)."""
    steps = [p.get("col_steps") for p in parts]
    if all(s is None for s in steps):
        return None
    first = steps[0]
    if any(s is None or s.shape != first.shape or not torch.equal(s.cpu(), first.cpu()) for s in steps):
        raise ValueError("col_steps: fused HPTQ siblings must carry the same per-column steps "
                         "(they share one input Hessian); the parts differ")
    return first.cpu().to(torch.float32)


def scale_input(x: torch.Tensor, col_scale: torch.Tensor | None) -> torch.Tensor:
    """x (M, K) ⊙ col_scale (K,) in float32, back in x's dtype (None: x unchanged); one pass over x."""
    return x if col_scale is None else (x.to(torch.float32) * col_scale).to(x.dtype)


def to_ssqr_tensors(layout: DenseResidual) -> dict[str, torch.Tensor]:
    """A ≤ 4-bit layout → SSQR tensors (docs/format.md §2) for the SSQR kernels: codes with no
    residual stay codes, a code with one becomes 0 and its whole weight an outlier, and the row scale
    is folded into the group scales. Both rounded once to float16 (relative error ≤ 2^-11 per
    weight; exact for SSQR's own layout). The col_scale is not folded (it varies along K, across a
    group): the kernel scales x by it (scale_input). ValueError when float16 or the outlier columns cannot hold it."""
    n, k = layout.shape
    if layout.bits > 4:
        raise ValueError(f"bits: the SSQR kernels take ≤ 4-bit codes, the layout has {layout.bits}")
    if k > MAX_K:
        raise ValueError(f"K={k} exceeds the int16 outlier columns (≤ {MAX_K})")
    row_scale = torch.ones(n) if layout.row_scale is None else layout.row_scale
    scales = layout.scales * row_scale[:, None]
    residual = layout.residual.to_dense(k)
    moved = residual != 0
    weight = (layout.scales.repeat_interleave(layout.group_size, dim=1) * layout.codes.float() + residual)
    outliers = torch.where(moved, weight * row_scale[:, None], 0.0)
    for name, t in (("scales", scales), ("outliers", outliers)):
        half = t.half()
        if not bool(torch.isfinite(half).all()) or bool(((half == 0) & (t != 0)).any()):
            raise ValueError(f"{name}: values outside float16's range ({float(t.abs().max()):.3g} max)")
    return pack_ssqr(torch.where(moved, 0, layout.codes.long()), scales.half(),
                     layout.perm if layout.perm is not None else torch.arange(k), outliers.half(), 4)


def dequantize(layout: DenseResidual) -> torch.Tensor:
    """(N, K) float32 weight in original column order (exact: every term is a float32 product
    of an fp16/fp32 scale and a small integer, or a value held exactly; then · col_scale, as the
    HPTQ reference dequantizer rounds it)."""
    stored = layout.scales.repeat_interleave(layout.group_size, dim=1) * layout.codes.float()
    stored = stored + layout.residual.to_dense(stored.shape[1])
    if layout.row_scale is not None:
        stored = stored * layout.row_scale[:, None]
    if layout.perm is None:
        weight = stored
    else:
        weight = torch.empty_like(stored)
        weight[:, layout.perm] = stored
    return weight if layout.col_scale is None else weight * layout.col_scale[None, :]


def permute_input(x: torch.Tensor, perm: torch.Tensor | None) -> torch.Tensor:
    """x (M, K) in original order → stored order (one gather per call)."""
    return x if perm is None else x.index_select(1, perm)
