"""HPTQ layer tensors (docs/format.md §3): encode, validate, reference decode, bit accounting.

A layer is `Wq = scale · z` with z (N, K) unbounded integers, cut into chunks of C columns.
Since chunks are concatenated row-major and each holds its columns in order, the stream is
simply the codes of `z` in row-major order; `chunk_bits` records where each chunk ends.

The tensors do not record K, so readers pass `in_features` (the layer's K).
"""
from __future__ import annotations

import math

import numpy as np
import torch

from babai_kernels.common import check_tensor, stored_bits
from babai_kernels.contract import OPTIONAL_FORMAT_TENSORS, TENSOR_NAMES as CONTRACT_TENSOR_NAMES
from babai_kernels.hptq.bits import pack_bits, peek32, words_to_uint
from babai_kernels.hptq.huffman import (ESCAPE, ESCAPE_BITS, MAX_CODE_LEN, TABLE_ENTRY_BITS, CodeTable,
                                  canonical_codes, design_code)

TENSOR_NAMES = CONTRACT_TENSOR_NAMES["hptq"]
OPTIONAL_NAMES = OPTIONAL_FORMAT_TENSORS["hptq"]    # ("col_steps",): format version 2
MAX_CHUNK_COLS = 1024       # worst case 1024 · (12 + 16) bits still fits an int16 chunk_bits
CHUNK_BITS_DTYPE_BITS = 16
SCALE_BITS = 32


# --- chunk width -----------------------------------------------------------------------------

MIN_PART_COLS = 256  # smallest column part choose_chunk_cols plans for


def choose_chunk_cols(in_features: int, row_parallel_blocks: int = 8) -> int:
    """C = the largest divisor of K / P that is at most 512 (docs/format.md §3).

    P starts at `row_parallel_blocks` and is lowered until it divides K and K / P ≥ 256 (or P = 1),
    so the 16-bit `chunk_bits` entry costs at most 16/C bits per weight even for small layers.
    """
    if in_features < 1 or row_parallel_blocks < 1:
        raise ValueError(f"choose_chunk_cols: need K ≥ 1 and P ≥ 1, got K={in_features}, "
                         f"P={row_parallel_blocks}")
    parts = next(p for p in range(row_parallel_blocks, 0, -1)
                 if in_features % p == 0 and (in_features // p >= MIN_PART_COLS or p == 1))
    per_part = in_features // parts
    return max(d for d in range(1, min(per_part, 512) + 1) if per_part % d == 0)


def _check_chunk_cols(in_features: int, chunk_cols: int) -> None:
    if not 1 <= chunk_cols <= MAX_CHUNK_COLS or in_features % chunk_cols:
        raise ValueError(f"chunk_cols: {chunk_cols} must divide K={in_features} and lie in "
                         f"[1, {MAX_CHUNK_COLS}]")


# --- encoding ---------------------------------------------------------------------------------

def _as_codes(z) -> torch.Tensor:
    check_tensor("z", z, dtype=(torch.int64, torch.int32, torch.int16, torch.int8), ndim=2)
    if z.numel() == 0:
        raise ValueError(f"z: empty shape {tuple(z.shape)}")
    return z.to(torch.int64)


def _code_for(z: torch.Tensor) -> CodeTable:
    """The code of z's histogram (bincount when the value range is small, else unique)."""
    lo, hi = int(z.min()), int(z.max())
    if hi - lo < 1 << 20:
        counts = torch.bincount((z - lo).reshape(-1)).cpu().numpy()
        values = np.flatnonzero(counts)
        return design_code(values + lo, counts[values])
    values, counts = torch.unique(z, return_counts=True)
    return design_code(values.cpu().numpy(), counts.cpu().numpy())


def _table_bits(table: CodeTable) -> int:
    return table.values.size * TABLE_ENTRY_BITS


def coded_bits(z: torch.Tensor, chunk_cols: int) -> int:
    """Exact stored size in bits of `encode_hptq(z, ·, chunk_cols)`, from the histogram alone:
    stream words × 32 + chunk_bits + code table + scale. z: (N, K) integer tensor."""
    z = _as_codes(z)
    n, k = z.shape
    _check_chunk_cols(k, chunk_cols)
    table = _code_for(z)
    stream_bits = 32 * math.ceil(table.payload_bits() / 32)
    return stream_bits + n * (k // chunk_cols) * CHUNK_BITS_DTYPE_BITS + _table_bits(table) + SCALE_BITS


def encode_hptq(z: torch.Tensor, scale: float, chunk_cols: int,
                col_steps: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
    """Pack integer codes z (N, K) and the matrix scale into the five HPTQ tensors (on z's device),
    plus `col_steps` (K,) float16 (format version 2) when given."""
    z = _as_codes(z)
    n, k = z.shape
    _check_chunk_cols(k, chunk_cols)
    if not math.isfinite(float(scale)):
        raise ValueError(f"scale: must be finite, got {scale}")
    extra = {}
    if col_steps is not None:
        _check_col_steps(col_steps, k)
        extra["col_steps"] = col_steps.to(z.device)
    table = _code_for(z)
    dev = z.device
    by_value = np.argsort(table.values)                 # escape (int32 min) sorts first here
    sorted_values = torch.as_tensor(table.values[by_value], device=dev)
    sorted_codes = torch.as_tensor(table.codes[by_value], device=dev)
    sorted_lengths = torch.as_tensor(table.lengths[by_value], device=dev)
    flat = z.reshape(-1)
    slot = torch.searchsorted(sorted_values, flat).clamp(max=sorted_values.numel() - 1)
    direct = sorted_values[slot] == flat
    codes, lengths = sorted_codes[slot], sorted_lengths[slot]
    esc = table.escape_index
    if esc is not None:
        esc_code, esc_len = int(table.codes[esc]), int(table.lengths[esc])
        codes = torch.where(direct, codes, (esc_code << ESCAPE_BITS) | (flat & 0xFFFF))
        lengths = torch.where(direct, lengths, torch.full_like(lengths, esc_len + ESCAPE_BITS))
    chunk_bits = lengths.reshape(n, k // chunk_cols, chunk_cols).sum(-1)
    return {
        "hptq_scale": torch.tensor([float(scale)], dtype=torch.float32, device=dev),
        "code_values": torch.as_tensor(table.values, dtype=torch.int32, device=dev),
        "code_lengths": torch.as_tensor(table.lengths, dtype=torch.uint8, device=dev),
        "chunk_bits": chunk_bits.to(torch.int16),
        "stream": pack_bits(codes, lengths),
        **extra,
    }


def _check_col_steps(col_steps: torch.Tensor, in_features: int | None = None) -> None:
    """col_steps: (K,) float16, finite and > 0 (docs/format.md §3, version 2)."""
    check_tensor("col_steps", col_steps, dtype=torch.float16, ndim=1)
    if in_features is not None and col_steps.shape[0] != in_features:
        raise ValueError(f"col_steps: shape {tuple(col_steps.shape)}, expected ({in_features},) (one per input column)")
    bad = ~(torch.isfinite(col_steps) & (col_steps > 0))
    if bad.any():
        j = int(torch.nonzero(bad)[0])
        raise ValueError(f"col_steps: column {j} has step {float(col_steps[j])}; steps must be finite and > 0")


# --- validation -------------------------------------------------------------------------------

def _check_table(values: np.ndarray, lengths: np.ndarray) -> None:
    if values.size == 0:
        raise ValueError("code_values: empty code table")
    if ((lengths < 1) | (lengths > MAX_CODE_LEN)).any():
        raise ValueError(f"code_lengths: lengths must lie in [1, {MAX_CODE_LEN}], "
                         f"got {lengths.tolist()[:16]}")
    if values.size == 1 and lengths[0] != 1:
        raise ValueError("code_lengths: a single-symbol table must have length 1")
    if values.size > 1:
        ordered = (lengths[1:] > lengths[:-1]) | ((lengths[1:] == lengths[:-1]) & (values[1:] > values[:-1]))
        if not ordered.all():
            i = int(np.flatnonzero(~ordered)[0]) + 1
            raise ValueError(f"code_values/code_lengths: entry {i} breaks canonical order "
                             "(sorted by length, then value, values distinct)")
    kraft = int((1 << (MAX_CODE_LEN - lengths)).sum())
    if kraft > 1 << MAX_CODE_LEN:
        raise ValueError(f"code_lengths: Kraft sum {kraft}/{1 << MAX_CODE_LEN} exceeds 1 (not a prefix code)")


def check_hptq_tensors(tensors: dict[str, torch.Tensor]) -> None:
    """Validate a layer's tensors against docs/format.md §3 as far as they go without K:
    names, dtypes, shapes, canonical prefix-code table, chunk sizes ≥ 0, stream length.
    The stream content is checked only by decoding."""
    if not isinstance(tensors, dict):
        raise ValueError(f"tensors: expected a dict of HPTQ tensors, got {type(tensors).__name__}")
    missing = [k for k in TENSOR_NAMES if k not in tensors]
    extra = [k for k in tensors if k not in TENSOR_NAMES + OPTIONAL_NAMES]
    if missing or extra:
        raise ValueError(f"tensors: missing {missing}, unexpected {extra} (need {list(TENSOR_NAMES)}, "
                         f"optionally {list(OPTIONAL_NAMES)})")
    if "col_steps" in tensors:
        _check_col_steps(tensors["col_steps"])
    check_tensor("hptq_scale", tensors["hptq_scale"], dtype=torch.float32, shape=(1,))
    check_tensor("code_values", tensors["code_values"], dtype=torch.int32, ndim=1)
    s = tensors["code_values"].numel()
    check_tensor("code_lengths", tensors["code_lengths"], dtype=torch.uint8, shape=(s,))
    check_tensor("chunk_bits", tensors["chunk_bits"], dtype=torch.int16, ndim=2)
    check_tensor("stream", tensors["stream"], dtype=torch.int32, ndim=1)
    scale = float(tensors["hptq_scale"][0])
    if not math.isfinite(scale):
        raise ValueError(f"hptq_scale: must be finite, got {scale}")
    _check_table(tensors["code_values"].cpu().numpy().astype(np.int64),
                 tensors["code_lengths"].cpu().numpy().astype(np.int64))
    chunk_bits = tensors["chunk_bits"].to(torch.int64)
    if chunk_bits.numel() == 0:
        raise ValueError(f"chunk_bits: empty shape {tuple(chunk_bits.shape)}")
    if (chunk_bits < 0).any():
        row, col = (int(i) for i in torch.nonzero(chunk_bits < 0)[0])
        raise ValueError(f"chunk_bits: chunk (row {row}, chunk column {col}) has a negative size")
    total, words = int(chunk_bits.sum()), tensors["stream"].numel()
    if words != math.ceil(total / 32):
        raise ValueError(f"stream: {words} words, but chunk_bits sum to {total} bits "
                         f"({math.ceil(total / 32)} words)")


def hptq_meta(tensors: dict[str, torch.Tensor], in_features: int) -> dict:
    """Validate a layer (`check_hptq_tensors` plus the chunk width for K = in_features) and
    describe it: {out_features N, in_features K, chunk_cols C, chunks_per_row, scale,
    n_symbols, has_escape, payload_bits (Σ chunk_bits), stored_bits}."""
    check_hptq_tensors(tensors)
    n, per_row = tensors["chunk_bits"].shape
    if not isinstance(in_features, int) or in_features < 1 or in_features % per_row:
        raise ValueError(f"in_features: K={in_features} is not a multiple of the {per_row} chunks per row")
    chunk_cols = in_features // per_row
    _check_chunk_cols(in_features, chunk_cols)
    if "col_steps" in tensors:
        _check_col_steps(tensors["col_steps"], in_features)
    values = tensors["code_values"]
    return {"out_features": n, "in_features": in_features, "chunk_cols": chunk_cols,
            "chunks_per_row": per_row, "scale": float(tensors["hptq_scale"][0]),
            "n_symbols": values.numel(), "has_escape": bool((values == ESCAPE).any()),
            "payload_bits": int(tensors["chunk_bits"].to(torch.int64).sum()),
            "stored_bits": stored_bits(tensors)}


# --- reference decoding -----------------------------------------------------------------------

def decode_lut(code_values: torch.Tensor, code_lengths: torch.Tensor) -> np.ndarray:
    """Symbol index of the code that the next 12 stream bits start with: (4096,) int64, −1
    where no code matches (a table with Kraft sum < 1). Expects a validated table."""
    lengths = code_lengths.cpu().numpy().astype(np.int64)
    codes = canonical_codes(lengths)
    lut = np.full(1 << MAX_CODE_LEN, -1, dtype=np.int64)
    for i, (code, length) in enumerate(zip(codes, lengths)):
        shift = MAX_CODE_LEN - int(length)
        lut[int(code) << shift: (int(code) + 1) << shift] = i
    return lut


def decode_hptq(tensors: dict[str, torch.Tensor], in_features: int) -> torch.Tensor:
    """Reference decoder → z (N, K) int32 (CPU). Decodes all chunks in lock step (numpy), one
    symbol per step. Raises ValueError naming the first chunk whose bits do not decode to
    exactly C symbols within its chunk_bits, or that escapes a value the table holds."""
    meta = hptq_meta(tensors, in_features)
    n, per_row, c = meta["out_features"], meta["chunks_per_row"], meta["chunk_cols"]
    lut = decode_lut(tensors["code_values"], tensors["code_lengths"])
    sym_values = tensors["code_values"].cpu().numpy().astype(np.int64)
    sym_lengths = tensors["code_lengths"].cpu().numpy().astype(np.int64)
    sym_escape = sym_values == ESCAPE
    in_table = np.zeros(1 << ESCAPE_BITS, dtype=bool)       # escapable values that have an entry
    held = sym_values[(sym_values >= -(1 << 15)) & (sym_values < 1 << 15)]
    in_table[held + (1 << 15)] = True
    words = words_to_uint(tensors["stream"].cpu()).numpy()
    chunk_bits = tensors["chunk_bits"].cpu().numpy().astype(np.int64).reshape(-1)
    ends = np.cumsum(chunk_bits)
    pos = ends - chunk_bits
    out = np.empty((c, n * per_row), dtype=np.int32)
    corrupt = np.zeros(n * per_row, dtype=bool)
    for i in range(c):
        peek = peek32(words, pos)
        sym = lut[peek >> (32 - MAX_CODE_LEN)]
        corrupt |= sym < 0
        sym = np.maximum(sym, 0)
        length, escape = sym_lengths[sym], sym_escape[sym]
        raw = (peek >> (32 - ESCAPE_BITS - length)) & 0xFFFF
        corrupt |= escape & in_table[raw ^ 0x8000]            # raw ^ 0x8000 = value + 2^15
        out[i] = np.where(escape, raw - ((raw & 0x8000) << 1), sym_values[sym])
        pos = pos + length + escape * ESCAPE_BITS
    corrupt |= pos != ends
    if corrupt.any():
        first = int(np.flatnonzero(corrupt)[0])
        raise ValueError(f"stream: chunk (row {first // per_row}, chunk column {first % per_row}) "
                         f"is corrupt: its {int(chunk_bits[first])} bits do not decode to exactly "
                         f"{c} symbols")
    return torch.from_numpy(np.ascontiguousarray(out.T)).reshape(n, per_row * c)


def dequantize_codes(z: torch.Tensor, scale: torch.Tensor | float,
                     col_steps: torch.Tensor | None = None) -> torch.Tensor:
    """Wq (N, K) float32 = (float32(scale) · z) · float32(α) from codes z (N, K) and optional α (K,) float16;
    the one rounding order every writer and reader of docs/format.md §3 uses."""
    w = torch.as_tensor(scale, dtype=torch.float32).reshape(-1)[:1].to(z.device) * z.to(torch.float32)
    return w if col_steps is None else w * col_steps.to(device=z.device, dtype=torch.float32)[None, :]


def dequantize_hptq(tensors: dict[str, torch.Tensor], in_features: int) -> torch.Tensor:
    """Wq (N, K) float32 = float32(scale) · z (· α per column with `col_steps`)."""
    z = decode_hptq(tensors, in_features)
    steps = tensors.get("col_steps")
    return dequantize_codes(z, tensors["hptq_scale"].cpu(), None if steps is None else steps.cpu())
