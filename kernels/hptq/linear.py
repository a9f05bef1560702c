"""`hptq_linear`: y = x · Wqᵀ (+ bias) for an HPTQ layer, dispatched by device and M.

Triton devices (CUDA, or CPU under TRITON_INTERPRET=1) run the custom op `babai::hptq_linear`
(opaque to torch.compile and CUDA graphs): the fused decode-GEMV (one launch: decode, dot,
reduction, scale, bias, cast) for M ≤ GEMV_MAX_M (x staged in shared memory: gemv_fits), else a decode into x.dtype followed by a torch
matmul. Where Triton cannot run, the chooser (babai_kernels.chooser) picks another kernel.
"""
from __future__ import annotations

from typing import Optional

import torch

from babai_kernels.common import check_tensor, use_triton
from babai_kernels.hptq.prepare import PreparedHPTQ

FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32)


@torch.library.custom_op("babai::hptq_linear", mutates_args=())
def _hptq_linear_op(x: torch.Tensor, words: torch.Tensor, bases: torch.Tensor,
                    offsets: torch.Tensor, lut: torch.Tensor, scale: float, out_features: int,
                    padded_k: int, bias: Optional[torch.Tensor]) -> torch.Tensor:
    from babai_kernels.hptq.gemv import gemv_fits, hptq_decode, hptq_gemv
    p = PreparedHPTQ(out_features, x.shape[1], scale, words, bases, offsets, lut, padded_k, x.device)
    if gemv_fits(x.shape[0], padded_k):
        return hptq_gemv(x, p, bias)
    y = x @ hptq_decode(p, x.dtype).T
    return y + bias.to(x.dtype) if bias is not None else y


@_hptq_linear_op.register_fake
def _(x, words, bases, offsets, lut, scale, out_features, padded_k, bias):
    return x.new_empty(x.shape[0], out_features)


def hptq_linear(x: torch.Tensor, prepared: PreparedHPTQ, bias: torch.Tensor | None = None) -> torch.Tensor:
    """x (..., K) float16/bfloat16/float32 on the layer's device → (..., N) in x.dtype."""
    p = prepared
    check_tensor("x", x, dtype=FLOAT_DTYPES, device=p.device)
    if x.dim() < 1 or x.shape[-1] != p.in_features:
        raise ValueError(f"x: last dim must be K={p.in_features}, got shape {tuple(x.shape)}")
    if bias is not None:
        check_tensor("bias", bias, dtype=FLOAT_DTYPES, shape=(p.out_features,), device=p.device)
    x2 = x.reshape(-1, p.in_features)
    if x2.shape[0] == 0:
        return x.new_empty(*x.shape[:-1], p.out_features)
    if use_triton(x.device):
        y = torch.ops.babai.hptq_linear(x2.contiguous(), p.words, p.bases, p.offsets, p.lut,
                                        p.scale, p.out_features, p.padded_k,
                                        None if bias is None else bias.contiguous())
    else:
        raise ValueError(f"prepared: laid out for Triton, but Triton cannot run on {x.device}")
    return y.reshape(*x.shape[:-1], p.out_features)
