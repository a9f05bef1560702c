"""Resident bits per weight under the serving runtime, for benchmarks.quality (issue 15).

Effective bits (quantizer/formats/result.py) count every byte a checkpoint stores. Resident bits
count what a server holds for the matmul, from the runtime layout (babai_kernels.runtime:
`from_ssqr` / `from_hptq` → DenseResidual, whose dense width HPTQ picks by resident bytes) with one
formula for every format:

    resident bytes = N·K·b/8                 dense codes at the layout's width b (2/3-bit widened to 4)
                   + N·(K/G)·2               group scales, 2 bytes each (fp16; all SSQR scales are fp16)
                     (N·2 when every group scale of a row is the same, e.g. HPTQ's all-ones S)
                   + N·4                     row scale, float32 (HPTQ's matrix scale per fused sibling)
                   + nnz·E + (N+1)·4         sparse residual as CSR: E = runtime.RESIDUAL_ENTRY_BYTES
                                             per nonzero (the CPU kernel's uint16 column + fp16 value),
                                             one int32 row offset per row
                   + K·4                     input permutation, int32 (when not the identity)

GPTQ/RTN (standard GPTQ layout, served by stock kernels that hold 4- or 8-bit codes): codes at
max(b, 4) bits, fp16 group scales and the packed zeros at max(b, 4) bits per group, no residual.
`RESIDENT_VERSION` hashes this file and the runtime, so cached rows are recounted when either changes.
"""
from __future__ import annotations

import torch

import hashlib
from pathlib import Path

from babai_kernels import runtime
from babai_kernels.runtime import DenseResidual, from_hptq, from_ssqr

SCALE_BYTES = 2
ROW_SCALE_BYTES = 4
CSR_OFFSET_BYTES = 4
PERM_BYTES = 4
RESIDENT_VERSION = hashlib.sha256(Path(__file__).read_bytes() + Path(runtime.__file__).read_bytes()).hexdigest()[:16]


def layout_bytes(layout: DenseResidual) -> float:
    """Resident bytes of one runtime layout (module docstring formula)."""
    n, k = layout.shape
    scales = n * SCALE_BYTES if layout.one_scale_per_row else layout.scales.numel() * SCALE_BYTES
    row_scale = n * ROW_SCALE_BYTES if layout.row_scale is not None else 0
    nnz = layout.residual.nnz
    residual = nnz * runtime.RESIDUAL_ENTRY_BYTES + (n + 1) * CSR_OFFSET_BYTES if nnz else 0
    perm = k * PERM_BYTES if layout.perm is not None else 0
    return n * k * layout.bits / 8 + scales + row_scale + residual + perm


def gptq_bytes(tensors: dict[str, torch.Tensor], bits: int, n: int, k: int) -> float:
    """Resident bytes of one GPTQ-layout linear: codes and zeros widened to max(bits, 4), fp16 scales.
    tensors: qweight (K·b/32, N) int32, scales (K/G, N) fp16, qzeros (K/G, N·b/32) int32."""
    groups = tensors["scales"].shape[0]
    width = max(bits, 4)
    return n * k * width / 8 + groups * n * (SCALE_BYTES + width / 8)


def resident_bytes(fmt: str, tensors: dict[str, torch.Tensor], n: int, k: int, bits: int | None = None) -> float:
    """Resident bytes of one quantized (N, K) linear stored as `tensors` in format `fmt`
    (ssqr | hptq | hrtn | gptq | rtn; `bits` for gptq/rtn). HPTQ linears are counted alone, not
    fused with their siblings (a fused layout may choose another dense width)."""
    if fmt == "ssqr":
        return layout_bytes(from_ssqr(tensors))
    if fmt in ("hptq", "hrtn"):
        return layout_bytes(from_hptq([tensors], k))
    if fmt in ("gptq", "rtn"):
        return gptq_bytes(tensors, bits, n, k)
    raise ValueError(f"fmt: {fmt!r} has no resident layout")


def model_resident_bits(fmt: str, weights: dict[str, torch.Tensor], tensors: dict[str, dict], bits: int | None = None
                        ) -> float:
    """Resident bits per weight over all quantized linears; weights: {linear: (N, K) dequantized},
    tensors: {linear: its stored tensors}."""
    total, count = 0.0, 0
    for name, w in weights.items():
        n, k = w.shape
        total += resident_bytes(fmt, tensors[name], n, k, bits)
        count += n * k
    return 8 * total / count
