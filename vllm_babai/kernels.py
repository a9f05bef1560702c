"""Swappable kernels for babai linears and the chooser (vLLM's MPLinearKernel pattern).

`choose_kernel(spec)` walks KERNELS in order and takes the first whose `can_implement(spec)` says
yes, skipping names listed in VLLM_DISABLED_KERNELS; it logs the choice once per (format, shape,
kernel) and, when none fits, raises a ValueError with every kernel's reason. Dense kernels serve
the runtime layout (babai_kernels.runtime: perm + dense codes + sparse residual + row scale); the
others take the format's own tensors. Only TorchReference keeps a dense float copy of the weight,
and it says so loudly.
"""
from __future__ import annotations

import os

import torch
from vllm.logger import init_logger

from babai_kernels import cpu_dense, cpu_lut, runtime
from babai_kernels.common import triton_available
from babai_kernels.contract import TENSOR_NAMES
from babai_kernels.hptq.reference import hptq_decode_matmul
from babai_kernels.runtime import DenseResidual

from .formats import LinearSpec

logger = init_logger("vllm.babai")
HPTQ_RUNTIME_ENV = "VLLM_BABAI_HPTQ_RUNTIME"      # "dense" (default) or "huffman"


def _bytes(tensors) -> int:
    return sum(t.numel() * t.element_size() for t in tensors if isinstance(t, torch.Tensor))


class BabaiKernel:
    """A kernel: `can_implement(spec) -> (ok, reason)`; `__init__(spec)` keeps only its resident
    tensors; `apply(x (M, K), bias) -> (M, N)` in x's dtype; `resident_bytes()`."""

    @classmethod
    def can_implement(cls, spec: LinearSpec) -> tuple[bool, str | None]:
        raise NotImplementedError

    def resident_bytes(self) -> int:
        raise NotImplementedError


class DenseResidualKernel(BabaiKernel):
    """y = (dense(x_stored) + x_stored @ Rᵀ) · row_scale (+ bias): a dense kernel plus the residual."""

    def __init__(self, spec: LinearSpec):
        layout, to = spec.layout, (lambda t: None if t is None else t.to(spec.device))
        self.perm, self.row_scale = to(layout.perm), to(layout.row_scale)
        residual = layout.residual.parts()
        self.residual = None if residual is None else tuple(to(t) for t in residual)
        self.packed = self.pack(layout)

    def pack(self, layout: DenseResidual):
        raise NotImplementedError

    def dense(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def apply(self, x: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        xs = runtime.permute_input(x, self.perm)
        y = runtime.add_residual(self.dense(xs), self.residual, xs)
        if self.row_scale is not None:
            y = y * self.row_scale
        if bias is not None:
            y = y + bias.float()
        return y.to(x.dtype)

    def resident_bytes(self) -> int:
        return _bytes([*self.packed.values(), self.perm, self.row_scale, *(self.residual or ())])


def _dense_reason(spec: LinearSpec, bits: tuple[int, ...]) -> str | None:
    if spec.layout is None:
        return "needs the dense runtime layout (the Huffman-resident HPTQ runtime was asked for)"
    if spec.device.type != "cpu":
        return f"CPU only, the layer is on {spec.device}"
    if spec.act_dtype != torch.bfloat16:
        return f"needs bfloat16 activations, the model runs {spec.act_dtype}"
    if spec.layout.bits not in bits:
        return f"serves {list(bits)}-bit dense codes, the layout has {spec.layout.bits}"
    return None


class BabaiLutCPU(BabaiKernel):
    """The project's CPU kernel (babai_kernels.cpu_lut, C++ AVX-512 BF16): the whole layout in one
    op — permutation, 4/8-bit codes decoded in registers, group scales, CSR residual, row scale,
    bias and the bfloat16 output."""

    @classmethod
    def can_implement(cls, spec):
        reason = _dense_reason(spec, cpu_lut.BITS) or cpu_lut.check_layout(spec.layout)
        if reason is None:
            reason = cpu_lut.load()[1]
        return reason is None, reason

    def __init__(self, spec: LinearSpec):
        self.packed = cpu_lut.pack(spec.layout)

    def apply(self, x, bias):
        return cpu_lut.lut_linear(self.packed, x, bias)

    def resident_bytes(self) -> int:
        return _bytes(self.packed.tensors())


class TorchInt4CPU(DenseResidualKernel):
    """PyTorch's CPU weight-only int4 GEMM (aten._weight_int4pack_mm_for_cpu) + the residual."""

    @classmethod
    def can_implement(cls, spec):
        reason = _dense_reason(spec, (4,))
        if reason is None and spec.shape[0] % 16:
            reason = f"needs N divisible by 16, the layer has N={spec.shape[0]}"
        if reason is None and cpu_dense.int4_group_size(spec.layout) is None:
            reason = (f"group size {spec.layout.group_size} of K={spec.shape[1]} is not one of "
                      f"{list(cpu_dense.INT4_GROUP_SIZES)} dividing K")
        return reason is None, reason

    def pack(self, layout):
        return cpu_dense.pack_int4(layout)

    def dense(self, x):
        return cpu_dense.int4_linear(self.packed, x)


class TorchInt8CPU(DenseResidualKernel):
    """PyTorch's CPU int8 weight GEMM (aten._weight_int8pack_mm), one scale per row, + the residual
    (5-bit codes are held as int8 too)."""

    @classmethod
    def can_implement(cls, spec):
        reason = _dense_reason(spec, (5, 8))
        if reason is None and not spec.layout.one_scale_per_row:
            reason = "needs one scale per row (the layout has group scales)"
        return reason is None, reason

    def pack(self, layout):
        return cpu_dense.pack_int8(layout)

    def dense(self, x):
        return cpu_dense.int8_linear(self.packed, x)


class VllmMixedPrecision(DenseResidualKernel):
    """vLLM's own mixed-precision kernel for the dense codes (choose_mp_linear_kernel: CPUWNA16 on
    CPU, Marlin/Machete/... on GPUs) as uint4b8 with group scales, + the residual."""

    @classmethod
    def _mp_config(cls, spec: LinearSpec):
        from vllm.model_executor.kernels.linear.mixed_precision.MPLinearKernel import MPLinearLayerConfig
        from vllm.scalar_type import scalar_types

        n, k = spec.shape
        return MPLinearLayerConfig(full_weight_shape=(k, n), partition_weight_shape=(k, n),
                                   weight_type=scalar_types.uint4b8, act_type=spec.act_dtype,
                                   group_size=spec.layout.group_size, zero_points=False)

    @classmethod
    def can_implement(cls, spec):
        if spec.layout is None or spec.layout.bits != 4:
            return False, "needs the dense runtime layout with 4-bit codes"
        if spec.act_dtype not in (torch.float16, torch.bfloat16):
            return False, f"vLLM's mixed-precision kernels take 16-bit activations, the model runs {spec.act_dtype}"
        from vllm.model_executor.kernels.linear import choose_mp_linear_kernel
        try:
            choose_mp_linear_kernel(cls._mp_config(spec))
        except (ValueError, NotImplementedError) as e:
            return False, f"vLLM has no mixed-precision kernel for it: {e}"
        return True, None

    def __init__(self, spec: LinearSpec):
        self.spec = spec
        super().__init__(spec)

    def pack(self, layout):
        from vllm.model_executor.kernels.linear import choose_mp_linear_kernel
        from vllm.model_executor.parameter import GroupQuantScaleParameter, PackedvLLMParameter

        from babai_kernels.gptq import pack_rows

        config = self._mp_config(self.spec)
        self.kernel = choose_mp_linear_kernel(config)(config, "qweight", "scales")
        self.holder = torch.nn.Module()
        unused = lambda *a, **k: None  # noqa: E731
        qweight = pack_rows((layout.codes.to(torch.int64) + 8).T, 4).to(self.spec.device)  # (K/8, N), GPTQ layout
        self.holder.register_parameter("qweight", PackedvLLMParameter(
            data=qweight, input_dim=0, output_dim=1, packed_dim=0, packed_factor=8, weight_loader=unused))
        self.holder.register_parameter("scales", GroupQuantScaleParameter(
            data=layout.scales.T.to(self.spec.device, self.spec.act_dtype).contiguous(), input_dim=0, output_dim=1,
            weight_loader=unused))
        self.holder.bias = None
        self.kernel.process_weights_after_loading(self.holder)
        self.name = f"{type(self).__name__}[{type(self.kernel).__name__}]"
        return dict(self.holder.named_parameters())

    def dense(self, x):
        return self.kernel.apply_weights(self.holder, x.to(self.spec.act_dtype)).float()


class TritonSSQR(BabaiKernel):
    """The project's Triton SSQR kernels (codes, scales and outliers fused) on CUDA."""

    @classmethod
    def can_implement(cls, spec):
        if spec.format != "ssqr":
            return False, "SSQR checkpoints only"
        if spec.device.type != "cuda" or not triton_available():
            return False, f"needs a CUDA device with Triton, the layer is on {spec.device}"
        return True, None

    def __init__(self, spec: LinearSpec):
        from babai_kernels.ssqr.linear import prepare_ssqr
        self.prepared = prepare_ssqr(spec.parts[0], spec.device)

    def apply(self, x, bias):
        from babai_kernels.ssqr.linear import ssqr_linear
        return ssqr_linear(x, self.prepared, bias)

    def resident_bytes(self) -> int:
        return _bytes(vars(self.prepared).values())


class HuffmanResident(BabaiKernel):
    """HPTQ kept Huffman-coded (resident bytes = checkpoint bytes); asked for with
    VLLM_BABAI_HPTQ_RUNTIME=huffman. CUDA: the fused decode-GEMV; CPU: the reference decoder runs
    on every call (memory-lean, slow)."""

    @classmethod
    def can_implement(cls, spec):
        if spec.format != "hptq" or spec.layout is not None:
            return False, f"HPTQ with {HPTQ_RUNTIME_ENV}=huffman only"
        return True, None

    def __init__(self, spec: LinearSpec):
        self.parts, self.k = spec.parts, spec.shape[1]
        if spec.device.type == "cuda":
            from babai_kernels.hptq.prepare import prepare_hptq
            self.prepared = [prepare_hptq(p, self.k, spec.device) for p in self.parts]

    def apply(self, x, bias):
        if hasattr(self, "prepared"):
            from babai_kernels.hptq.linear import hptq_linear
            y = torch.cat([hptq_linear(x, p) for p in self.prepared], dim=-1)
        else:
            y = torch.cat([hptq_decode_matmul(x, *(p[n] for n in TENSOR_NAMES["hptq"]))
                           for p in self.parts], dim=-1)
        return (y if bias is None else y + bias).to(x.dtype)

    def resident_bytes(self) -> int:
        if hasattr(self, "prepared"):
            return sum(_bytes(vars(p).values()) for p in self.prepared)
        return _bytes(t for p in self.parts for t in p.values())


class TorchReference(BabaiKernel):
    """Dense float32 weights dequantized once (tests; the loud fallback: ~8x the 4-bit memory)."""

    @classmethod
    def can_implement(cls, spec):
        if spec.layout is None:
            return False, "needs the dense runtime layout"
        return True, None

    def __init__(self, spec: LinearSpec):
        self.weight = runtime.dequantize(spec.layout).to(spec.device)

    def apply(self, x, bias):
        y = x.float() @ self.weight.T
        return (y if bias is None else y + bias.float()).to(x.dtype)

    def resident_bytes(self) -> int:
        return _bytes([self.weight])


KERNELS: list[type[BabaiKernel]] = [HuffmanResident, BabaiLutCPU, TorchInt4CPU, TorchInt8CPU, TritonSSQR,
                                    VllmMixedPrecision, TorchReference]
_logged: set = set()


def disabled_kernels() -> set[str]:
    return {name.strip() for name in os.environ.get("VLLM_DISABLED_KERNELS", "").split(",") if name.strip()}


def choose_kernel(spec: LinearSpec, layer: str) -> BabaiKernel:
    """The first kernel of KERNELS that can implement `spec` and is not disabled, built; ValueError
    naming `layer` and every kernel's reason when none can."""
    reasons = []
    for cls in KERNELS:
        if cls.__name__ in disabled_kernels():
            reasons.append(f"{cls.__name__}: disabled by VLLM_DISABLED_KERNELS")
            continue
        ok, reason = cls.can_implement(spec)
        if not ok:
            reasons.append(f"{cls.__name__}: {reason}")
            continue
        kernel = cls(spec)
        name = getattr(kernel, "name", cls.__name__)
        key = (spec.format, spec.shape, name)
        if key not in _logged:
            _logged.add(key)
            logger.info("babai kernel for %s %dx%d: %s", spec.format, *spec.shape, name)
            if cls is TorchReference:
                logger.warning("babai: %s %dx%d falls back to the torch reference (dense float32 weights "
                               "resident); other kernels refused: %s", spec.format, *spec.shape, "; ".join(reasons))
            if spec.bits is not None and spec.layout is not None and spec.layout.bits > spec.bits:
                logger.info("babai: %d-bit codes widened to %d bits for %s (%.2f extra bits/weight resident)",
                            spec.bits, spec.layout.bits, name, spec.layout.bits - spec.bits)
        return kernel
    raise ValueError(f"{layer}: no babai kernel can serve {spec.format} {spec.shape[0]}x{spec.shape[1]} "
                     f"({spec.act_dtype} on {spec.device}):\n  " + "\n  ".join(reasons))
