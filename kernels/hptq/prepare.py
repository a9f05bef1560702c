"""Kernel layout of an HPTQ layer, built once at load time.

Design (new ground; no published kernel): the file's chunk streams are decoded once (reference
decoder, kernels/hptq/pack.py, which also validates every chunk) and re-encoded into interleaved
lane streams of 128 codes (kernels/hptq/lanes.py) that a program decodes side by side for 32
rows with a 4 KB table in shared memory (kernels/hptq/gemv.py). No format change: the
checkpoint keeps its version-1 layout.

On a device where Triton cannot run (or a CUDA Triton without 3.9's Gluon API), or for a layer
the lane code cannot cover (more than 1024 distinct codes, or |z| ≥ 2^17), `prepare_hptq` keeps
the dequantized float32 weight instead (the torch reference path), decoded once rather than per
call.
"""
from __future__ import annotations

import functools
import logging
from dataclasses import dataclass

import torch

from babai_kernels.common import gluon_available, triton_interpret, use_triton
from babai_kernels.hptq.lanes import build_lane_layout
from babai_kernels.hptq.pack import decode_hptq, hptq_meta


@dataclass
class PreparedHPTQ:
    """An HPTQ layer laid out for `hptq_linear` on `device`.

    Lane layout (None when `weight` is used, kernels/hptq/lanes.py): words int32 (W + 42,),
    bases int32 (Np · ⌈S/16⌉,), offsets int16 (Np · S,), lut int32 (1024,), padded_k (K rounded
    up to 128, S = padded_k / 128); weight: (N, K) float32 dequantized weight, or None.
    """

    out_features: int
    in_features: int
    scale: float
    words: torch.Tensor | None
    bases: torch.Tensor | None
    offsets: torch.Tensor | None
    lut: torch.Tensor | None
    padded_k: int
    weight: torch.Tensor | None
    device: torch.device


@functools.lru_cache(maxsize=None)
def _warn_no_gluon() -> None:
    import triton
    logging.getLogger(__name__).warning(
        "HPTQ: Triton %s has no Gluon shared-memory gather (needs >= 3.9): HPTQ layers keep a dense "
        "float32 weight instead of the Huffman-resident kernel", triton.__version__)


def prepare_hptq(tensors: dict[str, torch.Tensor], in_features: int,
                 device: torch.device | str) -> PreparedHPTQ:
    """Validate the layer's tensors (docs/format.md §3, every chunk) and lay them out for `device`."""
    device = torch.device(device)
    meta = hptq_meta(tensors, in_features)
    z = decode_hptq(tensors, in_features)
    gpu_kernel = use_triton(device) and (triton_interpret() or gluon_available())
    if use_triton(device) and not gpu_kernel:
        _warn_no_gluon()
    lanes = build_lane_layout(z) if gpu_kernel else None
    if lanes is None:
        weight = (tensors["hptq_scale"].cpu() * z.to(torch.float32)).to(device)
        return PreparedHPTQ(meta["out_features"], in_features, meta["scale"], None, None, None, None,
                            0, weight, device)
    return PreparedHPTQ(meta["out_features"], in_features, meta["scale"], lanes.words.to(device),
                        lanes.bases.to(device), lanes.offsets.to(device), lanes.lut.to(device),
                        lanes.padded_k, None, device)
