"""Torch reference for an HPTQ linear layer: decode → dequantize → matmul in float32."""
from __future__ import annotations

import torch

from babai_kernels.common import check_tensor
from babai_kernels.hptq.pack import dequantize_hptq


def hptq_linear_reference(x: torch.Tensor, tensors: dict[str, torch.Tensor],
                          bias: torch.Tensor | None = None) -> torch.Tensor:
    """y = x Wqᵀ (+ bias) for x (..., K) → (..., N) in x.dtype, computed in float32 on x's device."""
    check_tensor("x", x, dtype=(torch.float16, torch.bfloat16, torch.float32))
    if x.dim() < 1:
        raise ValueError("x: needs at least one dimension (..., K)")
    weight = dequantize_hptq(tensors, x.shape[-1]).to(x.device)
    if bias is not None:
        check_tensor("bias", bias, shape=(weight.shape[0],), device=x.device)
    y = x.to(torch.float32) @ weight.T
    if bias is not None:
        y = y + bias.to(torch.float32)
    return y.to(x.dtype)


@torch.library.custom_op("babai::hptq_decode_matmul", mutates_args=())
def hptq_decode_matmul(x: torch.Tensor, hptq_scale: torch.Tensor, code_values: torch.Tensor,
                       code_lengths: torch.Tensor, chunk_bits: torch.Tensor, stream: torch.Tensor) -> torch.Tensor:
    """x (M, K) → (M, N) in x.dtype, decoding the layer on every call (nothing dense stays resident).
    A custom op so torch.compile treats the data-dependent decoder as opaque."""
    tensors = {"hptq_scale": hptq_scale, "code_values": code_values, "code_lengths": code_lengths,
               "chunk_bits": chunk_bits, "stream": stream}
    return hptq_linear_reference(x, tensors)


@hptq_decode_matmul.register_fake
def _(x, hptq_scale, code_values, code_lengths, chunk_bits, stream):
    return x.new_empty(x.shape[0], chunk_bits.shape[0])
