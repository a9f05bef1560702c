"""Bit streams of docs/format.md §3: 32-bit words, stream bit p is bit 31 − (p mod 32) of word p // 32.

Values are held in int64 tensors (any device) so every shift stays exact; stored words are int32.
"""
from __future__ import annotations

import torch

WORD_MASK = 0xFFFFFFFF


def words_to_uint(stream: torch.Tensor) -> torch.Tensor:
    """(W,) int32 stream → (W + 2,) int64 words read as uint32, followed by two zero words.

    The two zero words let `peek32` read any position without a bounds branch (bits beyond the
    end of the stream read as 0, as the format requires).
    """
    words = stream.to(torch.int64) & WORD_MASK
    return torch.cat([words, words.new_zeros(2)])


def peek32(words: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
    """Bits [p, p + 32) of the stream as an unsigned 32-bit number (first bit most significant).

    words: (W + 2,) int64 from `words_to_uint` (a torch tensor or its numpy array); positions:
    int64 bit positions of the same kind (clamped, so positions past the end read zeros and
    no position ever indexes outside `words`).
    """
    idx = (positions >> 5).clip(0, len(words) - 2)
    bit = positions & 31
    return ((words[idx] << bit) | (words[idx + 1] >> (32 - bit))) & WORD_MASK


def pack_bits(values: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """Concatenate bit fields MSB first into a zero-padded int32 stream.

    values: (F,) int64, field f holds its `lengths[f]` low bits (0 ≤ values < 2^len);
    lengths: (F,) int64 in [0, 32]. Returns (ceil(Σ lengths / 32),) int32.
    """
    ends = torch.cumsum(lengths, 0)
    total = int(ends[-1]) if ends.numel() else 0
    n_words = (total + 31) // 32
    starts = ends - lengths
    word = starts >> 5
    end = (starts & 31) + lengths                       # end of the field inside a 64-bit window
    spill = (end - 32).clamp(min=0)                     # bits that fall into the next word
    high = torch.where(end <= 32, values << (32 - end).clamp(min=0), values >> spill)
    low = (values & ((1 << spill) - 1)) << (64 - end).clamp(max=63)
    out = torch.zeros(n_words + 2, dtype=torch.int64, device=values.device)
    out.index_add_(0, word, high)                       # fields never share a bit, so add == or
    out.index_add_(0, word + 1, low)
    out = out[:n_words]
    return torch.where(out >= 2**31, out - 2**32, out).to(torch.int32)


def gather_bit_ranges(stream: torch.Tensor, starts: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """Concatenate the bit ranges [starts[r], starts[r] + lengths[r]) of `stream` into a new stream.

    stream: (W,) int32; starts, lengths: (R,) int64. Copies 32-bit pieces, never single bits.
    Returns (ceil(Σ lengths / 32),) int32.
    """
    pieces = (lengths + 31) // 32
    range_of_piece = torch.repeat_interleave(torch.arange(starts.numel(), device=starts.device), pieces)
    first_piece = torch.cumsum(pieces, 0) - pieces
    k = torch.arange(range_of_piece.numel(), device=starts.device) - first_piece[range_of_piece]
    piece_len = (lengths[range_of_piece] - 32 * k).clamp(max=32)
    piece_val = peek32(words_to_uint(stream), starts[range_of_piece] + 32 * k) >> (32 - piece_len)
    return pack_bits(piece_val, piece_len)
