"""Resident bits per weight under the serving runtime, for benchmarks.quality (issue 15).

Effective bits (quantizer/formats/result.py) count every byte a checkpoint stores. Resident bits
count what a server holds for the matmul, from the runtime layout (babai_kernels.runtime:
`from_ssqr` / `from_hptq` → DenseResidual; HPTQ picks a dense width per 32 rows by the CPU kernel's
measured time, runtime.hptq_dense_widths) with one formula for every format:

    resident bytes = Σ rows·K·b/8            dense codes at each run's width b (2/3-bit widened to 4;
                                             DenseResidual.dense_bytes)
                   + N·(K/G)·2               group scales, 2 bytes each (fp16; all SSQR scales are fp16)
                     (N·2 when every group scale of a row is the same, e.g. HPTQ's all-ones S)
                   + N·4                     row scale, float32 (HPTQ's matrix scale per fused sibling)
                   + nnz·E + (N+1)·4         sparse residual as CSR: E = runtime.RESIDUAL_ENTRY_BYTES
                                             per nonzero (the CPU kernel's uint16 column + fp16 value),
                                             one int32 row offset per row
                   + K·4                     input permutation, int32 (when not the identity)
                   + K·4                     HPTQ's per-column steps α, float32 (format version 2)

GPTQ/RTN (standard GPTQ layout, served by stock kernels that hold 4- or 8-bit codes): codes at
max(b, 4) bits, fp16 group scales and the packed zeros at max(b, 4) bits per group, no residual.

GPU resident bytes (`gpu_resident_bytes`): the tensors the Triton/Gluon kernels keep —
SSQR: kernels/ssqr/linear.PreparedSSQR (b-bit codes, fp16 scales, int32 perm, int16 column +
fp16 value per outlier slot, split-K counters); HPTQ/HRTN: the Huffman-resident lane layout
(kernels/hptq/lanes.py: stream words, int32 lane-group bases, int16 lane offsets, the 4 KB table,
the scale, α as float32), or the dense float32 weight where the lane code cannot cover the layer; GPTQ/RTN as above.
`RESIDENT_VERSION` hashes this file and the layouts it counts, so cached rows are recounted when
any of them changes.
"""
from __future__ import annotations

import torch

import hashlib
from pathlib import Path

from babai_kernels import runtime
from babai_kernels.hptq import lanes
from babai_kernels.hptq.pack import decode_hptq
from babai_kernels.runtime import DenseResidual, from_hptq, from_ssqr
from babai_kernels.ssqr import linear as ssqr_linear

SCALE_BYTES = 2
ROW_SCALE_BYTES = 4
CSR_OFFSET_BYTES = 4
PERM_BYTES = 4
COL_SCALE_BYTES = 4        # HPTQ's per-column steps α, float32 on the device (runtime.hptq_col_scale)
RESIDENT_VERSION = hashlib.sha256(b"".join(Path(f).read_bytes() for f in (
    __file__, runtime.__file__, lanes.__file__, ssqr_linear.__file__))).hexdigest()[:16]


def layout_bytes(layout: DenseResidual) -> float:
    """Resident bytes of one runtime layout (module docstring formula)."""
    n, k = layout.shape
    scales = n * SCALE_BYTES if layout.one_scale_per_row else layout.scales.numel() * SCALE_BYTES
    row_scale = n * ROW_SCALE_BYTES if layout.row_scale is not None else 0
    nnz = layout.residual.nnz
    residual = nnz * runtime.RESIDUAL_ENTRY_BYTES + (n + 1) * CSR_OFFSET_BYTES if nnz else 0
    perm = k * PERM_BYTES if layout.perm is not None else 0
    col_scale = k * COL_SCALE_BYTES if layout.col_scale is not None else 0
    return layout.dense_bytes + scales + row_scale + residual + perm + col_scale


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


def _nbytes(*ts: torch.Tensor) -> int:
    return sum(t.numel() * t.element_size() for t in ts)


def gpu_resident_bytes(fmt: str, tensors: dict[str, torch.Tensor], n: int, k: int, bits: int | None = None) -> float:
    """Bytes the GPU kernels keep for one (N, K) linear (module docstring)."""
    if fmt == "ssqr":
        p = ssqr_linear.prepare_ssqr(tensors, "cpu")
        return _nbytes(p.qcodes, p.scales, p.perm, p.outlier_cols, p.outlier_vals, p.locks)
    if fmt in ("hptq", "hrtn"):
        lay = lanes.build_lane_layout(decode_hptq(tensors, k))
        if lay is None:
            return n * k * 4
        alpha = k * COL_SCALE_BYTES if "col_steps" in tensors else 0
        return _nbytes(lay.words, lay.bases, lay.offsets, lay.lut) + 4 + alpha
    return resident_bytes(fmt, tensors, n, k, bits)


def model_resident_bits(fmt: str, weights: dict[str, torch.Tensor], tensors: dict[str, dict], bits: int | None = None,
                        gpu: bool = False) -> float:
    """Resident bits per weight over all quantized linears, CPU runtime or (gpu) GPU kernels;
    weights: {linear: (N, K) dequantized}, tensors: {linear: its stored tensors}."""
    count_bytes = gpu_resident_bytes if gpu else resident_bytes
    total, count = 0.0, 0
    for name, w in weights.items():
        n, k = w.shape
        total += count_bytes(fmt, tensors[name], n, k, bits)
        count += n * k
    return 8 * total / count
