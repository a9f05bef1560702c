"""Kernel layout of an HPTQ layer, built once at load time.

Design (new ground; no published kernel): the file's chunk streams are decoded once (reference
decoder, kernels/hptq/pack.py, which also validates every chunk) and re-encoded into interleaved
lane streams of 128 codes (kernels/hptq/lanes.py) that a program decodes side by side for 32
rows with a 4 KB table in shared memory (kernels/hptq/gemv.py). No format change: the
checkpoint keeps its version-1 layout.

Nothing here falls back: a layer the lane code cannot cover (more than 1024 distinct codes, or
|z| ≥ 2^17) raises, and where the GPU kernel cannot run `gpu_kernel_reason()` says why; the
kernel chooser (babai_kernels.chooser) decides what serves such a layer instead.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from babai_kernels.common import gluon_available, triton_available, triton_interpret
from babai_kernels.hptq.lanes import LaneLayout, build_lane_layout
from babai_kernels.hptq.pack import decode_hptq, hptq_meta


@dataclass
class PreparedHPTQ:
    """An HPTQ layer laid out for `hptq_linear` on `device` (kernels/hptq/lanes.py):
    words int32 (W + 42,), bases int32 (Np · ⌈S/16⌉,), offsets int16 (Np · S,), lut int32 (1024,),
    padded_k (K rounded up to 128, S = padded_k / 128)."""

    out_features: int
    in_features: int
    scale: float
    words: torch.Tensor
    bases: torch.Tensor
    offsets: torch.Tensor
    lut: torch.Tensor
    padded_k: int
    device: torch.device

    @classmethod
    def from_lanes(cls, tensors: dict[str, torch.Tensor], in_features: int, lanes: LaneLayout,
                   device: torch.device | str) -> "PreparedHPTQ":
        """The layer of checkpoint `tensors` from its lane layout (built from its decoded codes)."""
        meta, device = hptq_meta(tensors, in_features), torch.device(device)
        return cls(meta["out_features"], in_features, meta["scale"], lanes.words.to(device),
                   lanes.bases.to(device), lanes.offsets.to(device), lanes.lut.to(device), lanes.padded_k,
                   device)


def gpu_kernel_reason() -> str | None:
    """Why the Gluon lane kernel cannot run in this process (None: it can): it needs Triton ≥ 3.9's
    Gluon shared-memory gather and reinterpret on CUDA (the interpreter runs it without)."""
    if not triton_available():
        return "Triton is not importable"
    if triton_interpret() or gluon_available():
        return None
    import triton
    return f"Triton {triton.__version__} has no Gluon shared-memory gather/reinterpret (needs ≥ 3.9)"


def prepare_hptq(tensors: dict[str, torch.Tensor], in_features: int,
                 device: torch.device | str) -> PreparedHPTQ:
    """Validate the layer's tensors (docs/format.md §3, every chunk) and lay them out for `device`;
    ValueError when the lane code cannot cover the layer's codes."""
    lanes = build_lane_layout(decode_hptq(tensors, in_features))
    if lanes is None:
        raise ValueError("codes: more than 1024 distinct values or a magnitude ≥ 2^17, beyond the lane "
                         "code's limits (serve this layer with the dense route)")
    return PreparedHPTQ.from_lanes(tensors, in_features, lanes, device)
