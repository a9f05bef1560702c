"""The torch references, chosen last: correct everywhere, never fast."""
from __future__ import annotations

import torch

from babai_kernels import runtime
from babai_kernels.choices.base import BabaiKernel, tensor_bytes
from babai_kernels.choices.cuda import HPTQ_RUNTIME_ENV, hptq_runtime_override
from babai_kernels.contract import TENSOR_NAMES
from babai_kernels.layer_spec import LinearSpec


class HuffmanDecodeCPU(BabaiKernel):
    """HPTQ kept Huffman-coded on the CPU (resident bytes = checkpoint bytes), the reference decoder
    run on every call: memory-lean and slow; only when asked for with VLLM_BABAI_HPTQ_RUNTIME=huffman."""

    platforms = ("cpu",)

    @classmethod
    def can_implement(cls, spec):
        if spec.format != "hptq" or hptq_runtime_override() != "huffman":
            return False, f"HPTQ with {HPTQ_RUNTIME_ENV}=huffman only (decodes on every call)"
        return True, None

    def __init__(self, spec: LinearSpec):
        self.parts = spec.parts
        self.set_col_scale(spec)

    def apply(self, x, bias):
        from babai_kernels.hptq.reference import hptq_decode_matmul
        xs = self.scaled(x)
        y = torch.cat([hptq_decode_matmul(xs, *(p[n] for n in TENSOR_NAMES["hptq"])) for p in self.parts], dim=-1)
        return (y if bias is None else y + bias).to(x.dtype)

    def resident_bytes(self) -> int:
        return tensor_bytes([*(t for p in self.parts for t in p.values()), self.col_scale])


class TorchReference(BabaiKernel):
    """Dense float32 weights dequantized once (tests; the loud last resort: 8x the 4-bit memory)."""

    platforms = ("cpu", "cuda")

    @classmethod
    def can_implement(cls, spec):
        return True, None

    def __init__(self, spec: LinearSpec):
        self.weight = runtime.dequantize(spec.dense_layout()).to(spec.device)

    def apply(self, x, bias):
        y = x.float() @ self.weight.T
        return (y if bias is None else y + bias.float()).to(x.dtype)

    def resident_bytes(self) -> int:
        return tensor_bytes([self.weight])
