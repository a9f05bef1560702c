"""Kernel-friendly layout of an HPTQ layer, built once at load time.

HPTQ on a GPU (new ground; no published kernel) — the design shared by decode.py and gemv.py:

* Parallelism comes from the format's chunks: every chunk (row n, C columns) is an
  independently decodable bit range. One Triton lane decodes one chunk sequentially; a
  program runs BLOCK lanes (consecutive chunks, row-major) side by side.
* `chunk_starts` (int64, one per chunk) = exclusive cumsum of `chunk_bits`, so a lane jumps
  straight to its chunk.
* One table lookup decodes one symbol: the code length is at most 12 bits, so the next 12
  stream bits index a 4096-entry LUT giving the symbol's value (`lut_value`, int32) and
  `lut_info` = length | escape << 5. After an escape the next 16 bits are the value.
* A lane reads its next bits as a 32-bit window assembled from two consecutive uint32 words
  (12 + 16 = 28 ≤ 32 bits, enough for any symbol with its escape payload). The stream is
  padded with two zero words and every word index is clamped to the padded range, so no
  byte sequence can make a kernel read out of bounds; each lane decodes exactly C symbols,
  so corrupt data yields garbage values, never a hang. Invalid LUT slots (a table whose
  Kraft sum is < 1) decode as value 0 with length 12.
* The stream content is validated only by the reference decoder (kernels/hptq/pack.py);
  here the tensors' structure is validated (cheap), not every chunk.

On a device where Triton cannot run, `prepare_hptq` instead keeps the dequantized float32
weight (the torch reference path, e.g. vLLM on CPU), decoded once rather than per call.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from babai_kernels.common import use_triton
from babai_kernels.hptq.huffman import ESCAPE, MAX_CODE_LEN
from babai_kernels.hptq.pack import decode_lut, dequantize_hptq, hptq_meta

ESCAPE_FLAG = 1 << 5


@dataclass
class PreparedHPTQ:
    """An HPTQ layer laid out for `hptq_linear` on `device`.

    stream: (W + 2,) int32 (two zero words appended); chunk_starts: (N · K/C,) int64 start bit
    of every chunk; lut_value, lut_info: (4096,) int32; weight: (N, K) float32 dequantized
    weight when Triton cannot run on `device`, else None.
    """

    out_features: int
    in_features: int
    chunk_cols: int
    scale: float
    stream: torch.Tensor
    chunk_starts: torch.Tensor
    lut_value: torch.Tensor
    lut_info: torch.Tensor
    weight: torch.Tensor | None
    device: torch.device


def build_lut(code_values: torch.Tensor, code_lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(lut_value, lut_info), each (4096,) int32, from a validated code table."""
    lut = torch.from_numpy(decode_lut(code_values, code_lengths))
    valid = lut >= 0
    sym = lut.clamp(min=0)
    values = code_values.cpu().to(torch.int64)[sym]
    lengths = code_lengths.cpu().to(torch.int64)[sym]
    escape = values == ESCAPE
    lut_value = torch.where(valid & ~escape, values, 0).to(torch.int32)
    lut_info = torch.where(valid, lengths | escape * ESCAPE_FLAG, MAX_CODE_LEN).to(torch.int32)
    return lut_value, lut_info


def prepare_hptq(tensors: dict[str, torch.Tensor], in_features: int,
                 device: torch.device | str) -> PreparedHPTQ:
    """Validate the layer's tensors (docs/format.md §3) and lay them out for `device`."""
    device = torch.device(device)
    meta = hptq_meta(tensors, in_features)
    triton_ready = use_triton(device)
    bits = tensors["chunk_bits"].cpu().to(torch.int64).reshape(-1)
    stream = torch.cat([tensors["stream"].cpu(), torch.zeros(2, dtype=torch.int32)])
    lut_value, lut_info = build_lut(tensors["code_values"], tensors["code_lengths"])
    weight = None if triton_ready else dequantize_hptq(tensors, in_features).to(device)
    return PreparedHPTQ(meta["out_features"], in_features, meta["chunk_cols"], meta["scale"],
                        stream.to(device), (torch.cumsum(bits, 0) - bits).to(device),
                        lut_value.to(device), lut_info.to(device), weight, device)
