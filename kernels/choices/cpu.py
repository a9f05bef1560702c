"""CPU kernels over the runtime layout: the project's C++ kernel first, PyTorch's int4/int8
weight-only GEMMs (plus the residual) where it cannot run."""
from __future__ import annotations

import torch

from babai_kernels import cpu_dense, cpu_lut
from babai_kernels.choices.base import BabaiKernel, DenseResidualKernel, tensor_bytes
from babai_kernels.layer_spec import LinearSpec


def cpu_reason(spec: LinearSpec) -> str | None:
    """Why a bf16 CPU kernel cannot serve `spec` (device, activation dtype)."""
    if spec.device.type != "cpu":
        return f"CPU only, the layer is on {spec.device}"
    if spec.act_dtype != torch.bfloat16:
        return f"needs bfloat16 activations, the model runs {spec.act_dtype}"
    return None


def dense_cpu_reason(spec: LinearSpec, bits: tuple[int, ...]) -> str | None:
    """Why a bf16 CPU kernel over `bits`-bit dense codes cannot serve `spec` (builds the layout)."""
    reason = cpu_reason(spec)
    if reason is not None:
        return reason
    layout = spec.dense_layout()
    if layout.bits not in bits:
        return f"serves {list(bits)}-bit dense codes, the layout has {layout.bits}"
    return None


class BabaiLutCPU(BabaiKernel):
    """The project's CPU kernel (babai_kernels.cpu_lut, C++): the whole layout in one op —
    per-column steps α, permutation, 4/5/8-bit codes decoded in registers, group scales, CSR residual, row scale,
    bias and the bfloat16 output."""

    platforms = ("cpu",)

    @classmethod
    def can_implement(cls, spec):
        reason = cpu_reason(spec)
        if reason is None:
            reason = cpu_lut.load()[1]
        if reason is None:
            reason = cpu_lut.check_layout(spec.dense_layout(isa=cpu_lut.isa()))
        return reason is None, reason

    def __init__(self, spec: LinearSpec):
        # the variant's own layout: HPTQ's widths per 32 rows follow its measured costs (runtime.CPU_COSTS)
        self.variant = cpu_lut.isa()              # "avx512" (AVX-512 BF16) or "avx2" (AVX2 + FMA + F16C)
        self.packed = cpu_lut.pack(spec.dense_layout(isa=self.variant), self.variant)

    def apply(self, x, bias):
        return cpu_lut.lut_linear(self.packed, x, bias)

    def resident_bytes(self) -> int:
        return tensor_bytes(self.packed.tensors())


class TorchInt4CPU(DenseResidualKernel):
    """PyTorch's CPU weight-only int4 GEMM (aten._weight_int4pack_mm_for_cpu) + the residual."""

    platforms = ("cpu",)

    @classmethod
    def can_implement(cls, spec):
        reason = dense_cpu_reason(spec, (4,))
        if reason is None and spec.shape[0] % 16:
            reason = f"needs N divisible by 16, the layer has N={spec.shape[0]}"
        if reason is None and cpu_dense.int4_group_size(spec.dense_layout()) is None:
            reason = (f"group size {spec.dense_layout().group_size} of K={spec.shape[1]} is not one of "
                      f"{list(cpu_dense.INT4_GROUP_SIZES)} dividing K")
        return reason is None, reason

    def pack(self, layout):
        return cpu_dense.pack_int4(layout)

    def dense(self, x):
        return cpu_dense.int4_linear(self.packed, x)


class TorchInt8CPU(DenseResidualKernel):
    """PyTorch's CPU int8 weight GEMM (aten._weight_int8pack_mm), one scale per row, + the residual
    (5-bit codes are held as int8 too)."""

    platforms = ("cpu",)

    @classmethod
    def can_implement(cls, spec):
        reason = dense_cpu_reason(spec, (5, 8))
        if reason is None and not spec.dense_layout().one_scale_per_row:
            reason = "needs one scale per row (the layout has group scales)"
        return reason is None, reason

    def pack(self, layout):
        return cpu_dense.pack_int8(layout)

    def dense(self, x):
        return cpu_dense.int8_linear(self.packed, x)
