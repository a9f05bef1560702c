"""The standard GPTQ checkpoint layout (AutoGPTQ "gptq" v1), for stock vLLM GPTQ kernels: pack/unpack.

Symmetric, `desc_act: false`, static groups in original column order (act-order only changes
the quantization order, so no `g_idx` is needed). For a linear with weight (N, K), b bits and
group size G:

    qweight  int32 (K·b/32, N)   codes u = z + 2^(b-1), packed along K
    qzeros   int32 (K/G, N·b/32) zero point 2^(b-1), stored minus 1 (GPTQ v1), packed along N
    scales   float16 (K/G, N)
    W[n, k] = scales[k // G, n] · (u[k, n] − (zero + 1))  with zero = stored qzeros = 2^(b-1) − 1

Packing: every 32 consecutive values along the packed axis form a little-endian bit stream of
32·b bits (value t at bits b·t … b·t+b−1) stored as b int32 words. For b = 2, 4, 8 this is the
usual "value t of a word at bits b·t"; for b = 3 it is AutoGPTQ's 3-bit layout.
"""
from __future__ import annotations

import torch

from babai_kernels.common import check_finite
from babai_kernels.contract import GPTQ_BITS, TENSOR_NAMES


def _check_bits(bits: int) -> None:
    if bits not in GPTQ_BITS:
        raise ValueError(f"bits: {bits!r} not in {list(GPTQ_BITS)}")


def pack_rows(values: torch.Tensor, bits: int) -> torch.Tensor:
    """Pack unsigned values (L, M) (0 ≤ v < 2^bits, L % 32 == 0) along dim 0 → int32 (L·bits/32, M)."""
    _check_bits(bits)
    length, cols = values.shape
    if length % 32:
        raise ValueError(f"values: packed length {length} must be a multiple of 32")
    v = values.to(torch.int64).reshape(length // 32, 32, cols)
    if (v < 0).any() or (v >= 1 << bits).any():
        raise ValueError(f"values: outside [0, {1 << bits}) for {bits}-bit packing")
    words = torch.zeros(length // 32, bits, cols, dtype=torch.int64)
    for t in range(32):
        word, shift = divmod(bits * t, 32)
        words[:, word] |= (v[:, t] << shift) & 0xFFFFFFFF
        if shift + bits > 32:
            words[:, word + 1] |= v[:, t] >> (32 - shift)
    words = words.reshape(-1, cols)
    return torch.where(words >= 1 << 31, words - (1 << 32), words).to(torch.int32)


def unpack_rows(words: torch.Tensor, bits: int, length: int) -> torch.Tensor:
    """Inverse of pack_rows: int32 (length·bits/32, M) → int64 (length, M)."""
    _check_bits(bits)
    if words.dtype != torch.int32 or words.dim() != 2 or words.shape[0] * 32 != length * bits:
        raise ValueError(f"words: expected int32 ({length * bits // 32}, M), got {words.dtype} {tuple(words.shape)}")
    w = (words.to(torch.int64) & 0xFFFFFFFF).reshape(length // 32, bits, -1)
    mask = (1 << bits) - 1
    out = torch.empty(length // 32, 32, w.shape[-1], dtype=torch.int64)
    for t in range(32):
        word, shift = divmod(bits * t, 32)
        v = w[:, word] >> shift
        if shift + bits > 32:
            v = v | (w[:, word + 1] << (32 - shift))
        out[:, t] = v & mask
    return out.reshape(length, -1)


def pack_gptq(codes: torch.Tensor, scales: torch.Tensor, bits: int) -> dict[str, torch.Tensor]:
    """GPTQ tensors of one linear from signed codes (N, K) in [-2^(b-1), 2^(b-1)) (original column
    order) and scales (N, K/G) (group g = original columns [gG, (g+1)G))."""
    _check_bits(bits)
    rows, cols = codes.shape
    if scales.dim() != 2 or scales.shape[0] != rows or cols % scales.shape[1]:
        raise ValueError(f"scales: expected ({rows}, K/G) with G dividing K={cols}, got {tuple(scales.shape)}")
    half = 1 << (bits - 1)
    groups = scales.shape[1]
    zeros = torch.full((rows, groups), half - 1, dtype=torch.int64)
    return {
        "qweight": pack_rows((codes.to(torch.int64) + half).T, bits),
        "qzeros": pack_rows(zeros, bits).T.contiguous(),
        "scales": scales.T.to(torch.float16).contiguous(),
    }


def dequantize_gptq(tensors: dict[str, torch.Tensor], bits: int) -> torch.Tensor:
    """Dense (N, K) float32 weight of one linear's GPTQ tensors (qweight, qzeros, scales)."""
    missing = [name for name in TENSOR_NAMES["gptq"] if name not in tensors]
    if missing:
        raise ValueError(f"GPTQ tensors: missing {missing}")
    scales = tensors["scales"]
    check_finite("scales", scales)
    groups, rows = scales.shape
    cols = tensors["qweight"].shape[0] * 32 // bits
    u = unpack_rows(tensors["qweight"], bits, cols)                      # (K, N)
    zeros = unpack_rows(tensors["qzeros"].T.contiguous(), bits, rows).T  # (K/G, N)
    group = cols // groups
    z = u - (zeros + 1).repeat_interleave(group, dim=0)
    return (z.float() * scales.float().repeat_interleave(group, dim=0)).T.contiguous()
