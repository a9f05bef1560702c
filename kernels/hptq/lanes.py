"""Load-time re-encoding of an HPTQ layer into short lane streams (no format change).

The file's chunk streams decode one chunk per lane, serially, with escapes. For the GPU the
decoded codes z are re-encoded once, at load time (Marlin's habit):
- Grid: K rounds up to Kp (a multiple of SPAN = 128) and N to a multiple of 32, but only real
  codes are stored: the padding costs no stream bits (a lane past column K or row N decodes
  whatever bits follow; the kernel multiplies those values by x's zero padding or masks them).
- Lane (row n, span s) holds the codes of row n, columns [128 s, min(128 s + 128, K)), in
  order: short lanes make short serial decode chains (the latency bound of the GPU kernel). The
  32 lanes of a warp are 32 consecutive rows of one span, so they read the same x element at the
  same time (one broadcast load), and a row's spans are summed inside one program.
- Code: an escape-free, length-limited (≤ LANE_CODE_LEN = 10 bits) canonical Huffman code of
  this layer's histogram (package-merge, optimal under the limit): four codes fit the 64-bit
  window the kernel reads per step, and the table is 4 KB of shared memory. Layers it cannot
  cover (> 1024 distinct codes, or |z| ≥ 2^17) get no lane layout.
- Stream: the lane streams concatenated MSB-first without padding, in (row, span) order, plus
  LOOK_AHEAD_WORDS zero words (a lane reads up to 128 · 10 + 64 bits past its start). A lane's
  first bit = bases[row, span // 16] (int32, the first bit of its group of 16 lanes) +
  offsets[row, span] (int16: a group holds ≤ 16 · 128 · 10 < 2^15 bits), 16 + 2 bits per 128
  codes = 0.14 bit/weight.
- Table `lut` int32 (1024,): entry for the next 10 stream bits = float32 bits of the code's value
  with its length (1..10) in the 4 low mantissa bits; bits 4-5 are 0 (the value's low mantissa
  bits are 0 for |z| < 2^17), so a running sum of entries carries the bit offset in its low 6
  bits. The decoder multiplies x by the entry read as float32: relative error ≤ 2^-19 per weight,
  far below fp16/bf16 output rounding, and saves a shift and a conversion per symbol.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from babai_kernels.hptq.bits import pack_bits
from babai_kernels.hptq.huffman import canonical_codes, package_merge_lengths

SPAN = 128                 # columns per lane
LANE_GROUP = 16            # lanes per int32 base (offsets within a group fit int16)
ROW_BLOCK = 32             # rows per program (one warp row of lanes)
LANE_CODE_LEN = 10         # longest lane code: table of 2^10 entries
MAX_ABS_CODE = 1 << 17
LOOK_AHEAD_WORDS = 2 + SPAN * LANE_CODE_LEN // 32


@dataclass(frozen=True)
class LaneLayout:
    """words int32 (W + LOOK_AHEAD_WORDS,); bases int32 (Np · ⌈S/16⌉,) and offsets int16
    (Np · S,) for S = Kp/128 spans per row: lane (row, span) starts at bit
    bases[row, span // 16] + offsets[row, span]; lut int32 (1024,); padded_k Kp; payload_bits
    (sum of the real codes' lengths)."""
    words: torch.Tensor
    bases: torch.Tensor
    offsets: torch.Tensor
    lut: torch.Tensor
    padded_k: int
    payload_bits: int


def _code(z: torch.Tensor) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray] | None:
    """(values, lengths, codes) in canonical order and per-symbol table index, or None."""
    values, inverse, counts = torch.unique(z, return_inverse=True, return_counts=True)
    if values.numel() > 1 << LANE_CODE_LEN or int(values.abs().max()) >= MAX_ABS_CODE:
        return None
    lengths = package_merge_lengths(counts.numpy(), LANE_CODE_LEN)
    order = np.lexsort((values.numpy(), lengths))             # by length, then value
    rank = np.empty_like(order)
    rank[order] = np.arange(order.size)
    lengths_c = lengths[order]
    return values.numpy()[order], lengths_c, canonical_codes(lengths_c), rank[inverse.numpy()]


def _lut(values: np.ndarray, lengths: np.ndarray, codes: np.ndarray) -> torch.Tensor:
    entries = np.zeros(1 << LANE_CODE_LEN, dtype=np.int64)
    bits = values.astype(np.float32).view(np.int32).astype(np.int64) | lengths
    for code, length, entry in zip(codes, lengths, bits):
        shift = LANE_CODE_LEN - int(length)
        entries[int(code) << shift:(int(code) + 1) << shift] = entry
    return torch.from_numpy(entries).to(torch.int32)


def build_lane_layout(z: torch.Tensor) -> LaneLayout | None:
    """Lane layout of codes z (N, K) (CPU integer tensor), or None if the code cannot cover z."""
    n, k = z.shape
    kp = -(-k // SPAN) * SPAN
    np_rows = -(-n // ROW_BLOCK) * ROW_BLOCK
    code = _code(z)
    if code is None:
        return None
    values, lengths, codes, index = code
    sym = torch.from_numpy(index).reshape(-1)                  # row-major = (row, span) lane order
    sym_len = torch.from_numpy(lengths)[sym]
    grid = torch.zeros(np_rows, kp, dtype=torch.int64)        # bits per position, padding 0
    grid[:n, :k] = sym_len.reshape(n, k)
    lane_bits = grid.reshape(-1, SPAN).sum(1)
    if int(lane_bits.sum()) >= 2**31 - 64:
        return None
    starts = (torch.cumsum(lane_bits, 0) - lane_bits).reshape(np_rows, kp // SPAN)
    group = torch.arange(kp // SPAN) // LANE_GROUP
    bases = starts[:, ::LANE_GROUP]                                     # (Np, ⌈S/16⌉)
    offsets = starts - bases[:, group]
    words = pack_bits(torch.from_numpy(codes)[sym], sym_len)
    words = torch.cat([words, torch.zeros(LOOK_AHEAD_WORDS, dtype=torch.int32)])
    return LaneLayout(words, bases.reshape(-1).to(torch.int32), offsets.reshape(-1).to(torch.int16),
                      _lut(values, lengths, codes), kp, int(lane_bits.sum()))
