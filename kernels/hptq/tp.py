"""Tensor-parallel slices of an HPTQ layer (docs/format.md §3), by bit-range copies.

Neither slice decodes the stream: the chunks of a row range, or of a chunk-column range in
every row, are bit ranges located by `chunk_bits`, copied 32 bits at a time. The code table
and scale are shared unchanged, the per-column steps (version 2) split with the columns (symbols a slice no longer uses stay valid entries).
"""
from __future__ import annotations

import torch

from babai_kernels.hptq.bits import gather_bit_ranges
from babai_kernels.hptq.pack import check_hptq_tensors

_SHARED = ("hptq_scale", "code_values", "code_lengths")


def _chunk_starts(chunk_bits: torch.Tensor) -> torch.Tensor:
    """(N, nC) int64 start bit of every chunk."""
    bits = chunk_bits.to(torch.int64).reshape(-1)
    return (torch.cumsum(bits, 0) - bits).reshape(chunk_bits.shape)


def _sliced(tensors, chunk_bits: torch.Tensor, starts: torch.Tensor, lengths: torch.Tensor,
            cols: slice = slice(None)):
    """The slice's tensors; `cols`: its input columns of the per-column steps (version 2), if any."""
    out = {name: tensors[name].clone() for name in _SHARED}
    if "col_steps" in tensors:
        out["col_steps"] = tensors["col_steps"][cols].clone()
    out["chunk_bits"] = chunk_bits.contiguous().clone()
    out["stream"] = gather_bit_ranges(tensors["stream"], starts, lengths)
    return out


def slice_rows(tensors: dict[str, torch.Tensor], start: int, stop: int) -> dict[str, torch.Tensor]:
    """Rows [start, stop) of the layer (column-parallel split): one contiguous bit range."""
    check_hptq_tensors(tensors)
    n = tensors["chunk_bits"].shape[0]
    if not 0 <= start < stop <= n:
        raise ValueError(f"slice_rows: rows [{start}, {stop}) not a non-empty range of 0..{n}")
    chunk_bits = tensors["chunk_bits"][start:stop]
    first = int(_chunk_starts(tensors["chunk_bits"])[start, 0])
    length = int(chunk_bits.to(torch.int64).sum())
    dev = tensors["stream"].device
    return _sliced(tensors, chunk_bits, torch.tensor([first], device=dev), torch.tensor([length], device=dev))


def slice_cols(tensors: dict[str, torch.Tensor], part: int, parts: int) -> dict[str, torch.Tensor]:
    """Input-column part `part` of `parts` (row-parallel split): chunk columns
    [part·nC/P, (part+1)·nC/P) of every row; needs (K/P) % C == 0, i.e. P divides nC."""
    check_hptq_tensors(tensors)
    per_row = tensors["chunk_bits"].shape[1]
    if parts < 1 or per_row % parts or not 0 <= part < parts:
        raise ValueError(f"slice_cols: cannot take part {part} of {parts}: the layer has {per_row} "
                         f"chunks per row, and (K/P) must be a multiple of the chunk width")
    width = per_row // parts
    cols = slice(part * width, (part + 1) * width)
    chunk_bits = tensors["chunk_bits"][:, cols]
    starts = _chunk_starts(tensors["chunk_bits"])[:, cols.start].to(tensors["stream"].device)
    lengths = chunk_bits.to(torch.int64).sum(1).to(tensors["stream"].device)
    k_part = tensors["col_steps"].numel() // parts if "col_steps" in tensors else 0
    return _sliced(tensors, chunk_bits, starts, lengths, slice(part * k_part, (part + 1) * k_part))
