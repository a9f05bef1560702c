"""CPU kernels for the dense part of the runtime layout (kernels/runtime.py), from PyTorch itself:

- int4: `aten._weight_int4pack_mm_for_cpu` (PyTorch's AVX-512/AVX2 weight-only int4 GEMM, bf16
  activations; group sizes 32/64/128/256 dividing K; w = (u − 8)·s + zero with u = z + 8);
- int8: `aten._weight_int8pack_mm` (int8 weights, one scale per output row), for layouts with a
  single scale per row (HPTQ, whose S is all ones).

Each `pack_*` returns the kernel's resident tensors (nothing else of the layout is kept); each
`*_linear` computes y = x_stored @ (S ⊙ Z)ᵀ for x (M, K) bfloat16 in stored order → (M, N) float32.
"""
from __future__ import annotations

import torch

from babai_kernels.runtime import DenseResidual

INT4_GROUP_SIZES = (32, 64, 128, 256)


def int4_group_size(layout: DenseResidual) -> int | None:
    """The group size the int4 kernel would use: the layout's, or — when every scale of a row is
    the same (HPTQ) — the largest supported one dividing K; None when none fits."""
    k = layout.shape[1]
    if layout.one_scale_per_row:
        return next((g for g in reversed(INT4_GROUP_SIZES) if k % g == 0), None)
    return layout.group_size if layout.group_size in INT4_GROUP_SIZES and k % layout.group_size == 0 else None


def pack_int4(layout: DenseResidual) -> dict[str, torch.Tensor]:
    """{weight uint8 (N, K/2) packed by PyTorch, scales_zeros bfloat16 (K/G, N, 2)}; G = int4_group_size."""
    group = int4_group_size(layout)
    if layout.bits > 4 or group is None:
        raise ValueError(f"layout: int4 kernel needs ≤ 4-bit codes and a group size in {INT4_GROUP_SIZES} "
                         f"dividing K={layout.shape[1]} (bits {layout.bits}, group {layout.group_size})")
    u = (layout.codes.to(torch.int32) + 8).contiguous()
    weight = torch.ops.aten._convert_weight_to_int4pack_for_cpu(u, 1)
    k = layout.shape[1]
    scales = layout.scales if group == layout.group_size else layout.scales[:, :1].expand(-1, k // group)
    s = scales.T.to(torch.bfloat16)
    return {"weight": weight, "scales_zeros": torch.stack([s, torch.zeros_like(s)], dim=-1).contiguous()}


def int4_linear(packed: dict[str, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    group = x.shape[1] // packed["scales_zeros"].shape[0]
    y = torch.ops.aten._weight_int4pack_mm_for_cpu(x.to(torch.bfloat16), packed["weight"], group,
                                                   packed["scales_zeros"])
    return y.float()


def pack_int8(layout: DenseResidual) -> dict[str, torch.Tensor]:
    """{weight int8 (N, K), scales bfloat16 (N,)} for a layout with one scale per row."""
    if not layout.one_scale_per_row:
        raise ValueError("layout: int8 kernel needs one scale per row (group scales differ)")
    return {"weight": layout.codes.contiguous(), "scales": layout.scales[:, 0].to(torch.bfloat16).contiguous()}


def int8_linear(packed: dict[str, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    return torch.ops.aten._weight_int8pack_mm(x.to(torch.bfloat16), packed["weight"], packed["scales"]).float()
