"""The project's CPU kernel for the runtime layout: `babai_cpu::lut_linear` (kernels/cpu_lut.cpp).

One op per linear, bfloat16 activations: activation permutation, dense 4-, 5- or 8-bit codes turned
into exact bfloat16 (AVX-512 BF16: a 16/32-entry lookup table, VDPBF16PS over up to 8 activation rows)
or int16 (AVX2 + FMA + F16C: VPMADDWD over up to 4 rows of x, each rounded to 16-bit fixed point) in
registers, group scales, the CSR residual, row scale, bias and the output cast. Nothing dense stays
resident. Larger batches decode each block once per 256 rows into a small per-thread buffer and reuse it
(`PREDECODE_FROM`); large ones dequantize tiles of the weight to bfloat16 for PyTorch's GEMM (`DENSE_FROM`,
only where that GEMM multiplies in bf16: `bf16_gemm_native`), or, on AVX-512 VNNI hosts, round x to int8
per row and block of columns and multiply the codes as uint8 by VPDPBUSD (`ACT8_FROM`, before the dense
path; `BABAI_CPU_ACT8=0` switches it off; docs/cpu_kernel.md).

Build: on first use (~1 min; `scripts/setup.sh` does it once) with explicit instruction-set flags
(`CFLAGS`: the AVX2 baseline; the AVX-512 functions are compiled for their extensions inside the source),
never `-march=native`, under a torch extension name keyed by those flags and the host's CPU features, so
a cache shared between machines (TORCH_EXTENSIONS_DIR, a container image) never hands one host a build
made for another. Before building or loading, the host's features (/proc/cpuinfo) are checked: a host
without AVX2/FMA/F16C is refused, with the reason logged and returned by `load()`; after loading, the
op's own CPUID probe must agree. The op checks the instruction set again on every call.

Instruction set: the best the host has (`isa()`), or `BABAI_CPU_ISA=avx2|avx512` to force one (tests
and benchmarks run the AVX2 variant on an AVX-512 machine this way); `pack(layout, isa=...)` per layer.

    packed = pack(layout)            # resident tensors, built once at load
    y = lut_linear(packed, x, bias)  # x (M, K) in original order → (M, N) in x.dtype
"""
from __future__ import annotations

import functools
import hashlib
import logging
import os
from dataclasses import dataclass
from pathlib import Path

import torch

from babai_kernels.runtime import DenseResidual, Residual

logger = logging.getLogger(__name__)

SOURCE = Path(__file__).with_suffix(".cpp")
ROWS = 16          # output rows per block (one AVX-512 register of float32)
BITS = (4, 5, 8)
FP16_TERMS = 3
ISA_ENV = "BABAI_CPU_ISA"              # "avx512" / "avx2" force a variant; unset or "auto": the best
SANITIZE_ENV = "BABAI_CPU_SANITIZE"    # "1": build with AddressSanitizer + UBSan (tests/test_cpu_lut_sanitizers.py)
CFLAGS = ("-O3", "-fopenmp", "-mavx2", "-mfma", "-mf16c", "-mtune=generic")
SANITIZE_CFLAGS = ("-O1", "-g", "-fno-omit-frame-pointer", "-fsanitize=address,undefined",
                   "-fno-sanitize-recover=all")
# Host features (as /proc/cpuinfo names them) each variant executes; the build needs the avx2 set.
ISA_FEATURES = {"avx2": ("avx2", "fma", "f16c"),
                "avx512": ("avx2", "fma", "f16c", "avx512f", "avx512bw", "avx512vl", "avx512dq", "avx512_bf16")}
BUILD_ISA = "avx2"
# Rows of x from which blocks are decoded once per chunk (of 256 rows), by variant and code width: the
# crossovers measured in benchmarks/results/linear_cpu.md (avx512, 2026-12-05: 4 and 8 bits 128, ties at
# 64; 5 bits, which no layout takes since 8 bits cost less, 16-32 when chunks were 64 rows). avx2 (int16
# pairs, VPMADDWD; step of SmolLM2-135M's linears, 1 thread, medians of 5, per pass / predecoded): SSQR-w4
# (4 bits) 16.5 / 17.3 ms at M = 8, 31.1 / 29.0 at 16; HPTQ-4.3 (8 bits) 24.4 / 25.7 at 16, 47.1 / 46.7 at
# 32, 102.7 / 97.7 at 64; 5 bits (no avx2 layout takes them) as 8.
PREDECODE_FROM = {"avx512": {4: 128, 5: 32, 8: 128}, "avx2": {4: 16, 5: 32, 8: 32}}
# Rows of x from which the op dequantizes tiles of rows to bfloat16 (each weight rounded once, as the
# bf16 model's own) and runs PyTorch's bf16 GEMM on them, by variant and by the layout's class
# (`dense_class`): the crossovers measured in benchmarks/results/linear_cpu.md (avx512, blocks
# predecoded once per 256 rows: SSQR-w4 256, gate_up 512; HPTQ-3.3 (4-bit blocks) 512-1024, gate_up
# 2048 within 3 %; HPTQ-4.3 (8-bit blocks) never up to M = 2,048 on qkv, gate_up and down_proj (the codes'
# path 3-16 % faster), o_proj 2048 by 1.5 %). avx2 (the same step, predecoded / dense): SSQR-w4 53.0 /
# 66.7 ms at M = 32, 100.9 / 98.4 at 64, 150.2 / 132.7 at 96; HPTQ-4.3 97.7 / 100.2 at 64, 132.0 / 130.9 at
# 96, 176.3 / 164.1 at 128; 4-bit blocks without group scales (no avx2 layout) as with them.
NEVER = 1 << 62
DENSE_FROM = {"avx512": {"group scales": 256, "no group scales": 512, "no group scales, 8 bits": NEVER},
              "avx2": {"group scales": 64, "no group scales": 64, "no group scales, 8 bits": 96}}


# Rows of x from which the avx512 variant rounds x to int8 per row and block of columns and multiplies by
# VPDPBUSD (kernels/cpu_lut.cpp, q8), on hosts with AVX-512 VNNI unless BABAI_CPU_ACT8=0; by the layout's
# class (`dense_class`). Measured (linears of 4 layers' step, 1 thread, x vLLM's bf16, int8 / bf16 x, two
# rounds): SSQR-w4 M = 8 1.24-1.31 / 1.22-1.27, 10 1.18-1.25 / 0.98-1.03, 12 1.15-1.26 / 1.04-1.06; HPTQ-4.3
# ms per step M = 8 1.50-1.69 / 1.35-1.37, 12 2.00 / 2.24, 16 2.31-2.43 / 2.46-2.49 (HPTQ-3.3 alike).
ACT8_ENV = "BABAI_CPU_ACT8"            # "0": never round activations to int8; N > 0: from N rows of x
ACT8_FEATURE = "avx512_vnni"           # the avx512 variant's int8 path needs it; avx2's runs on AVX2
ACT8_FROM = {"group scales": 10, "no group scales": 12, "no group scales, 8 bits": 12}
# The same for the avx2 variant (VPMADDUBSW, y8), by the layout's most common code width. Linears of a step
# (benchmarks.linear_cpu, 4 layers, 1 thread), x vLLM's bf16, int8 x / bf16 x (int16 path below DENSE_FROM,
# dense from it), M = 8 / 10 / 16 / 64: SSQR-w4 (4 bits) 0.91 / 0.90 / 0.81 / 0.87 against 0.85 / 0.73 / 0.64
# / 0.61. HPTQ-4.3 (8 bits: two 4-bit planes per code, as many multiply-adds an instruction as VPMADDWD), M =
# 4 / 8 / 16 / 64: 0.66 / 0.57 / 0.54 / 0.55 against 1.51 / 1.17 / 0.84 / 0.70: never. 5 bits (no layout
# takes them) as 4.
# At M = 8 the two paths tie (lead's A/B, whole 30-layer steps, two rounds: SSQR-w4 avx2 18.14 / 18.30 ms int16 against
# 18.82 / 18.72 int8), so decode at 8 requests keeps the int16 path: from 10.
ACT8_FROM_AVX2 = {4: 10, 5: 10, 8: NEVER}
# Rows of x from which those avx2 layers give way to the dense path (their DENSE_FROM when larger): PyTorch's
# bf16 GEMM passes y8 between M = 256 (SSQR-w4 0.84 int8 x against 0.82 dense) and 512 (0.83 / 0.86; 1,024:
# 0.76 / 0.90).
ACT8_DENSE_FROM_AVX2 = 384
# The dense path is PyTorch's bf16 GEMM (oneDNN), fast only where it multiplies in bf16: hosts with one of
# BF16_GEMM_FEATURES, unless oneDNN is capped below those instructions (ONEDNN_MAX_CPU_ISA / DNNL_MAX_CPU_ISA
# at one of BF16_GEMM_CAPS_BELOW). Elsewhere, as on an AVX2-only host, it converts to float and runs ~10x
# slower than the codes' paths (this box with oneDNN capped at AVX2, 1 thread, 3072x576: PyTorch's and vLLM's
# bf16 linear 9.2-9.8 multiply-adds/ns at M = 1 … 256, against ~90 for the avx2 variant's int8 path;
# benchmarks/results/linear_cpu.md "AVX2 host"), so there the op never takes it.
BF16_GEMM_FEATURES = ("avx512_bf16", "amx_bf16", "avx_ne_convert")
ONEDNN_ISA_ENVS = ("ONEDNN_MAX_CPU_ISA", "DNNL_MAX_CPU_ISA")
BF16_GEMM_CAPS_BELOW = ("SSE41", "AVX", "AVX2", "AVX2_VNNI", "AVX512_CORE", "AVX512_CORE_VNNI")


def act8_from(isa: str, features: frozenset[str], layout_class: str, bits: int) -> int:
    """Rows of x from which `pack`'s layers of `layout_class` (`dense_class`) whose most common code width is
    `bits` take int8 activations: ACT8_FROM[layout_class] for the avx512 variant on a host with AVX-512 VNNI
    (`features`: as /proc/cpuinfo names them; `pack` asks the op's CPUID probe), ACT8_FROM_AVX2[bits] for the
    avx2 variant, else NEVER. BABAI_CPU_ACT8=0 → NEVER, =N (a positive integer) → N for every layer that can
    (tests and benchmarks); ValueError for another value."""
    value = os.environ.get(ACT8_ENV, "").strip()
    if value and not value.isdigit():
        raise ValueError(f"{ACT8_ENV}={value!r}: expected 0 (bf16 x at every M) or a positive number of rows")
    if (value and int(value) == 0) or (isa == "avx512" and ACT8_FEATURE not in features):
        return NEVER
    if value:
        return int(value)
    return ACT8_FROM[layout_class] if isa == "avx512" else ACT8_FROM_AVX2[bits]


def bf16_gemm_native(features: frozenset[str]) -> bool:
    """Whether PyTorch's bf16 GEMM, the dense path's, runs bf16 instructions on a host with `features` (as
    /proc/cpuinfo names them) under this process's oneDNN cap (ONEDNN_MAX_CPU_ISA)."""
    caps = [os.environ.get(name, "").strip().upper() for name in ONEDNN_ISA_ENVS]
    return bool(features & set(BF16_GEMM_FEATURES)) and not any(cap in BF16_GEMM_CAPS_BELOW for cap in caps)


def common_bits(block_bits: torch.Tensor) -> int:
    """The most common code width of a packed layout's blocks."""
    return max(BITS, key=lambda b: int((block_bits == b).sum()))


def dense_class(group_scales: bool, bits: int) -> str:
    """DENSE_FROM's key for a layout with or without group scales whose most common width is `bits`."""
    return "group scales" if group_scales else "no group scales, 8 bits" if bits == 8 else "no group scales"


@functools.cache
def host_features() -> frozenset[str]:
    """The CPU flags Linux reports for this host (empty where /proc/cpuinfo is absent); read once per process
    (`pack` asks for every layer)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return frozenset()
    for line in text.splitlines():
        if line.startswith("flags"):
            return frozenset(line.split(":", 1)[1].split())
    return frozenset()


def choose_isa(features: frozenset[str], forced: str | None) -> tuple[str | None, str | None]:
    """(variant, None) for a host with `features`, or (None, why not); `forced` as BABAI_CPU_ISA."""
    missing = lambda isa: sorted(set(ISA_FEATURES[isa]) - features)
    if forced not in (None, "", "auto", *ISA_FEATURES):
        return None, f"{ISA_ENV}={forced!r} is not one of auto, {', '.join(ISA_FEATURES)}"
    if missing(BUILD_ISA):
        return None, (f"this CPU lacks {', '.join(missing(BUILD_ISA))}, which the kernel's build "
                      f"({' '.join(CFLAGS[2:5])}) needs")
    if forced in ISA_FEATURES:
        if missing(forced):
            return None, f"{ISA_ENV}={forced} but this CPU lacks {', '.join(missing(forced))}"
        return forced, None
    return ("avx512" if not missing("avx512") else "avx2"), None


def build_flags(sanitize: bool = False) -> list[str]:
    return list(CFLAGS) + (list(SANITIZE_CFLAGS) if sanitize else [])


def build_name(flags: list[str], features: frozenset[str]) -> str:
    """Torch extension name: a hash of the flags and of the host's features the kernel can use."""
    relevant = sorted(features & {f for fs in ISA_FEATURES.values() for f in fs})
    key = hashlib.sha256(("\0".join(flags) + "|" + ",".join(relevant)).encode()).hexdigest()[:12]
    return f"babai_cpu_lut_{key}"


_state: dict[str, str] = {}


@functools.cache
def load() -> tuple[bool, str | None]:
    """Build (first time) and load the extension; (ok, reason it cannot be used). A refusal is logged."""
    ok, why = _load()
    if not ok:
        logger.warning("babai CPU kernel refused: %s", why)
    return ok, why


def _load() -> tuple[bool, str | None]:
    features = host_features()
    isa_name, why = choose_isa(features, os.environ.get(ISA_ENV))
    if isa_name is None:
        return False, why
    sanitize = os.environ.get(SANITIZE_ENV) == "1"
    flags = build_flags(sanitize)
    try:
        from torch.utils import cpp_extension
        cpp_extension.load(name=build_name(flags, features), sources=[str(SOURCE)], is_python_module=False,
                           extra_cflags=flags,
                           extra_ldflags=["-fopenmp"] + (["-fsanitize=address,undefined"] if sanitize else []))
    except Exception as e:  # noqa: BLE001 — compiler missing or failing: the chooser reports it
        return False, f"could not build the C++ extension {SOURCE.name}: {str(e).strip().splitlines()[-1][:200]}"
    probed = frozenset(torch.ops.babai_cpu.cpu_features())
    if not set(ISA_FEATURES[isa_name]) <= probed:
        return False, (f"/proc/cpuinfo reports {isa_name} ({', '.join(ISA_FEATURES[isa_name])}) but CPUID lacks "
                       f"{', '.join(sorted(set(ISA_FEATURES[isa_name]) - probed))}")
    torch.library.register_fake("babai_cpu::lut_linear")(_fake)
    _state["isa"] = isa_name
    return True, None


def isa() -> str | None:
    """The variant `pack` uses by default: "avx512" or "avx2" (None until `load()` succeeded)."""
    return _state.get("isa") if load()[0] else None


def _fake(x, packed, block_bits, scales, group_size, perm, col_scale, offsets, cols, vals, row_scale, bias, isa="auto",
          predecode_from=32, dense_from=(1 << 63) - 1, act8_from=(1 << 63) - 1):
    return x.new_empty(x.shape[0], block_bits.shape[0] * ROWS)


@dataclass
class LutPacked:
    """The op's resident tensors (block layout: kernels/cpu_lut.cpp), its two integers and the variant."""

    packed: torch.Tensor      # (Σ_b K/2 · (16 | 20 | 32 bytes for 4 | 5 | 8 bits),) uint8: the blocks of 16 rows
    block_bits: torch.Tensor  # (N/16,) uint8: each block's width
    scales: torch.Tensor      # (N/16, K/G, 16) float16, or empty when all are 1 (G = K)
    offsets: torch.Tensor     # (N + 1,) int32, CSR residual
    cols: torch.Tensor        # (nnz,) int16 holding uint16 columns
    vals: torch.Tensor        # (nnz,) float16
    perm: torch.Tensor        # (K,) int64 or empty
    col_scale: torch.Tensor   # (K,) float32 in original column order (HPTQ's α), or empty
    row_scale: torch.Tensor   # (N,) float32, (N/16,) when constant on blocks of 16 rows, or empty
    group_size: int
    predecode_from: int       # rows of x from which codes are decoded once per chunk: PREDECODE_FROM[isa] of
    # the width most blocks have
    dense_from: int           # rows of x from which tiles are dequantized for PyTorch's GEMM (DENSE_FROM)
    act8_from: int = NEVER    # rows of x from which x is rounded to int8 (avx512 with VNNI: `act8_from`)
    isa: str = "auto"         # "avx512" or "avx2"

    def tensors(self) -> list[torch.Tensor]:
        return [self.packed, self.block_bits, self.scales, self.offsets, self.cols, self.vals, self.perm, self.col_scale, self.row_scale]


def check_layout(layout: DenseResidual) -> str | None:
    """Why the kernel cannot serve `layout`, or None."""
    n, k = layout.shape
    if any(b not in BITS for _, b in layout.runs):
        return f"serves {list(BITS)}-bit dense codes, the layout has {sorted({b for _, b in layout.runs})}"
    if n % ROWS:
        return f"needs N divisible by {ROWS}, the layer has N={n}"
    if any(rows % ROWS for rows, _ in layout.runs):
        return f"needs each dense width's rows divisible by {ROWS}, the layout has {list(layout.runs)}"
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


def _pack_codes(codes: torch.Tensor, bits: int) -> torch.Tensor:
    """codes (N, K) int8 within `bits` → the blocks' bytes (N/16 · K/2 · 4·bits,) uint8 (kernels/cpu_lut.cpp)."""
    n, k = codes.shape
    blocks = n // ROWS
    pairs = codes.view(blocks, ROWS, k // 2, 2).transpose(1, 2)         # block, pair, row, column
    if bits == 8:
        return pairs.reshape(-1).contiguous().view(torch.uint8)           # (N/16, K/2, 32) int8
    u = pairs.to(torch.int64) + (1 << (bits - 1))                        # in [0, 2^bits)
    packed = ((u[..., 0] & 15) | ((u[..., 1] & 15) << 4)).to(torch.uint8)  # (N/16, K/2, 16)
    if bits == 5:                                                        # bit 2i + c of a 32-bit mask
        shifts = torch.arange(2 * ROWS, dtype=torch.int64).view(ROWS, 2)
        high = ((u >> 4) << shifts).sum((-2, -1))                        # (N/16, K/2)
        mask = high.to(torch.int32).view(torch.uint8).view(blocks, k // 2, 4)  # little-endian bytes
        packed = torch.cat([packed, mask], dim=-1)
    return packed.reshape(-1)


def check_residual(r: Residual, n: int, k: int) -> None:
    """Raise ValueError unless `r` is a well-formed CSR (n, k) matrix: offsets (n + 1) int32 from 0 to
    nnz, never decreasing; cols and vals (nnz,) with 0 ≤ cols < k."""
    if r.offsets.dtype != torch.int32 or r.offsets.shape != (n + 1,):
        raise ValueError(f"residual: offsets must be int32 of shape ({n + 1},), got {r.offsets.dtype} {tuple(r.offsets.shape)}")
    if r.cols.dim() != 1 or r.vals.dim() != 1 or r.cols.numel() != r.vals.numel():
        raise ValueError(f"residual: cols and vals must be 1-D of one size, got {tuple(r.cols.shape)} and {tuple(r.vals.shape)}")
    if r.cols.is_floating_point() or r.cols.is_complex():
        raise ValueError(f"residual: cols must be integers, got {r.cols.dtype}")
    nnz = r.vals.numel()
    if int(r.offsets[0]) != 0:
        raise ValueError(f"residual: offsets[0] must be 0, got {int(r.offsets[0])}")
    if int(r.offsets[-1]) != nnz:
        raise ValueError(f"residual: offsets[{n}] must equal the {nnz} entries, got {int(r.offsets[-1])}")
    if bool((r.offsets[1:] < r.offsets[:-1]).any()):
        raise ValueError("residual: offsets must not decrease")
    if nnz and (int(r.cols.min()) < 0 or int(r.cols.max()) >= k):
        raise ValueError(f"residual: columns must lie in [0, {k}), got [{int(r.cols.min())}, {int(r.cols.max())}]")


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


def pack(layout: DenseResidual, isa: str | None = None) -> LutPacked:
    """The op's resident tensors (see kernels/cpu_lut.cpp for the block layout). A layout whose rows
    share one scale keeps one group per row, none when it is 1 (HPTQ); a row scale constant on
    blocks of 16 rows (HPTQ: one per fused sibling) is kept once per block. `isa`: the variant to run
    ("avx512" / "avx2"; default `isa()`). Raises ValueError for a layout it cannot serve or a malformed
    residual, RuntimeError when the kernel is unavailable."""
    reason = check_layout(layout)
    if reason:
        raise ValueError(f"layout: {reason}")
    n, k = layout.shape
    check_residual(layout.residual, n, k)
    ok, why = load()
    if not ok:
        raise RuntimeError(f"babai CPU kernel: {why}")
    if isa is not None and choose_isa(host_features(), isa)[0] != isa:
        raise RuntimeError(f"babai CPU kernel: {choose_isa(host_features(), isa)[1]}")
    isa = isa or _state["isa"]
    group = k if layout.one_scale_per_row else layout.group_size
    scales = layout.scales[:, :1] if group == k else layout.scales
    scales = scales.new_empty(0) if group == k and bool((scales == 1).all()) else scales
    row_scale = layout.row_scale if layout.row_scale is not None else torch.empty(0)
    if row_scale.numel() and bool((row_scale.view(-1, ROWS) == row_scale.view(-1, ROWS)[:, :1]).all()):
        row_scale = row_scale[::ROWS].contiguous()
    blocks = n // ROWS
    runs, row0 = [], 0
    for rows, bits in layout.runs:
        runs.append(_pack_codes(layout.codes[row0:row0 + rows], bits))
        row0 += rows
    block_bits = torch.tensor([b for rows, b in layout.runs for _ in range(rows // ROWS)], dtype=torch.uint8)
    scales = scales.half().view(blocks, ROWS, -1).transpose(1, 2).contiguous() if scales.numel() else scales.half()
    common = common_bits(block_bits)
    cls = dense_class(bool(scales.numel()), common)
    a8 = act8_from(isa, frozenset(torch.ops.babai_cpu.cpu_features()), cls, common)
    dense = DENSE_FROM[isa][cls] if isa == "avx512" or a8 == NEVER else max(DENSE_FROM[isa][cls], ACT8_DENSE_FROM_AVX2)
    dense = dense if bf16_gemm_native(host_features()) else NEVER
    return LutPacked(torch.cat(runs), block_bits, scales,
                     *_csr_fp16(layout),
                     layout.perm if layout.perm is not None else torch.empty(0, dtype=torch.int64),
                     torch.empty(0) if layout.col_scale is None else layout.col_scale.float().contiguous(),
                     row_scale.float().contiguous(), group, PREDECODE_FROM[isa][common], dense, a8, isa)


def lut_linear(p: LutPacked, x: torch.Tensor, bias: torch.Tensor | None = None,
               predecode_from: int | None = None, dense_from: int | None = None,
               act8_from: int | None = None) -> torch.Tensor:
    """x (M, K) bfloat16 in original column order → (M, N) bfloat16. predecode_from: rows of x from which
    codes are decoded once per chunk (default: PREDECODE_FROM of the variant and the layout's most common width);
    dense_from: rows of x from which tiles of rows are dequantized to bf16 for PyTorch's GEMM (default:
    DENSE_FROM of the variant and layout)."""
    return torch.ops.babai_cpu.lut_linear(x, p.packed, p.block_bits, p.scales, p.group_size, p.perm, p.col_scale,
                                          p.offsets, p.cols, p.vals, p.row_scale,
                                          x.new_empty(0) if bias is None else bias, p.isa,
                                          p.predecode_from if predecode_from is None else predecode_from,
                                          p.dense_from if dense_from is None else dense_from,
                                          p.act8_from if act8_from is None else act8_from)
