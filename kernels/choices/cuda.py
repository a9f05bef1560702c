"""CUDA kernels: the project's Triton SSQR kernel, the Gluon Huffman-lane decode-GEMV for HPTQ,
and HPTQ's dense route on the SSQR kernel (4-bit codes, the residual fused as its outliers)."""
from __future__ import annotations

import os

import torch

from babai_kernels.choices.base import BabaiKernel, tensor_bytes
from babai_kernels.common import triton_available
from babai_kernels.layer_spec import LinearSpec

HPTQ_RUNTIME_ENV = "VLLM_BABAI_HPTQ_RUNTIME"   # override: "huffman" or "dense" (default: per platform)
HALF_DTYPES = (torch.float16, torch.bfloat16)


def hptq_runtime_override() -> str | None:
    """The user's HPTQ runtime override ("huffman" | "dense"), None when unset; ValueError otherwise."""
    value = os.environ.get(HPTQ_RUNTIME_ENV, "").strip().lower() or None
    if value not in (None, "huffman", "dense"):
        raise ValueError(f"{HPTQ_RUNTIME_ENV}={value!r}: expected 'huffman' or 'dense' (or unset)")
    return value


def ssqr_launch_reason(spec: LinearSpec, bits: int, group: int, has_outliers: bool) -> str | None:
    """Why the SSQR kernel cannot launch for the layer (only where the AOT bundle is the sole route;
    a bias, unknown before the first call, is assumed absent)."""
    from babai_kernels.ssqr.matmul import launch_reason
    return launch_reason(bits, group, has_outliers, False, spec.act_dtype, spec.device)


def triton_reason(spec: LinearSpec, fmt: str, dtypes: tuple[torch.dtype, ...]) -> str | None:
    """Why a Triton kernel for `fmt` taking `dtypes` activations cannot serve `spec`."""
    if spec.format != fmt:
        return f"{fmt.upper()} checkpoints only"
    if spec.device.type != "cuda":
        return f"CUDA only, the layer is on {spec.device}"
    if not triton_available():
        return "Triton is not importable"
    if spec.act_dtype not in dtypes:
        return f"takes {[str(d).removeprefix('torch.') for d in dtypes]} activations, the model runs {spec.act_dtype}"
    return None


class TritonSSQR(BabaiKernel):
    """The project's Triton SSQR kernel (codes, group scales and outliers fused; one launch after
    the activation gather)."""

    platforms = ("cuda",)

    @classmethod
    def can_implement(cls, spec):
        reason = triton_reason(spec, "ssqr", HALF_DTYPES)
        if reason is None:
            from babai_kernels.ssqr.pack import ssqr_meta
            _, _, bits, group = ssqr_meta(spec.parts[0])
            reason = ssqr_launch_reason(spec, bits, group, bool((spec.parts[0]["outlier_vals"] != 0).any()))
        return reason is None, reason

    def __init__(self, spec: LinearSpec):
        from babai_kernels.ssqr.linear import prepare_ssqr
        self.prepared = prepare_ssqr(spec.parts[0], spec.device)

    def apply(self, x, bias):
        from babai_kernels.ssqr.linear import ssqr_linear
        return ssqr_linear(self.scaled(x), self.prepared, bias)

    def resident_bytes(self) -> int:
        return tensor_bytes(vars(self.prepared).values())


class HuffmanLanes(BabaiKernel):
    """HPTQ kept Huffman-coded on the GPU (kernels/hptq/gemv.py): each part re-encoded at load into
    lanes of 128 codes with a 10-bit lane code, decoded in the GEMV from a table in shared memory.
    Resident bytes ≈ the checkpoint's stored bits + ~0.14 bit/weight (lane starts) + 4 KB per part."""

    platforms = ("cuda",)

    @classmethod
    def can_implement(cls, spec):
        from babai_kernels.hptq.prepare import gpu_kernel_reason
        reason = triton_reason(spec, "hptq", HALF_DTYPES + (torch.float32,))
        if reason is None and hptq_runtime_override() == "dense":
            reason = f"{HPTQ_RUNTIME_ENV}=dense asks for the dense route"
        reason = reason or gpu_kernel_reason()
        if reason is None:
            from babai_kernels.hptq.gemv import launch_reason
            reason = launch_reason(spec.shape[1], spec.act_dtype, spec.device)
        if reason is None and any(lanes is None for lanes in cls._lanes(spec)):
            from babai_kernels.hptq.lanes import LANE_CODE_LEN, MAX_ABS_CODE
            reason = (f"a part has more than {1 << LANE_CODE_LEN} distinct codes or a code of magnitude "
                      f"≥ {MAX_ABS_CODE} (the lane code's limits)")
        return reason is None, reason

    @staticmethod
    def _lanes(spec: LinearSpec):
        from babai_kernels.hptq.lanes import build_lane_layout
        return spec.cached("hptq_lanes", lambda: [build_lane_layout(z) for z in spec.hptq_codes()])

    def __init__(self, spec: LinearSpec):
        from babai_kernels.hptq.prepare import PreparedHPTQ
        self.prepared = [PreparedHPTQ.from_lanes(part, spec.shape[1], lanes, spec.device)
                         for part, lanes in zip(spec.parts, self._lanes(spec))]
        self.set_col_scale(spec)

    def apply(self, x, bias):
        from babai_kernels.hptq.linear import hptq_linear
        xs = self.scaled(x)     # α ⊙ x once per call (a fused version would scale x where the kernel stages it)
        y = torch.cat([hptq_linear(xs, p) for p in self.prepared], dim=-1)
        return y if bias is None else y + bias.to(y.dtype)

    def resident_bytes(self) -> int:
        return sum(tensor_bytes(vars(p).values()) for p in self.prepared) + tensor_bytes([self.col_scale])


class TritonHPTQDense(TritonSSQR):
    """HPTQ's dense route on the SSQR Triton kernel: codes within 4 bits stay codes, the others
    become fused outliers, each part's scale folded into float16 group scales (one launch)."""

    @classmethod
    def can_implement(cls, spec):
        reason = triton_reason(spec, "hptq", HALF_DTYPES)
        if reason is None and hptq_runtime_override() == "huffman":
            reason = f"{HPTQ_RUNTIME_ENV}=huffman asks for the Huffman-resident kernel"
        if reason is None:
            tensors = cls._ssqr_tensors(spec)
            reason = tensors if isinstance(tensors, str) else None
        if reason is None:
            reason = ssqr_launch_reason(spec, 4, spec.shape[1] // tensors["scales"].shape[0],
                                        bool((tensors["outlier_vals"] != 0).any()))
        return reason is None, reason

    @staticmethod
    def _ssqr_tensors(spec: LinearSpec) -> dict[str, torch.Tensor] | str:
        """The SSQR tensors of the 4-bit layout, or why there are none."""
        from babai_kernels.runtime import to_ssqr_tensors

        def build():
            try:
                return to_ssqr_tensors(spec.dense_layout(4))
            except ValueError as e:
                return f"the 4-bit SSQR form does not hold it: {e}"
        return spec.cached("ssqr_tensors", build)

    def __init__(self, spec: LinearSpec):
        from babai_kernels.ssqr.linear import prepare_ssqr
        self.prepared = prepare_ssqr(self._ssqr_tensors(spec), spec.device)
        self.set_col_scale(spec)

    def resident_bytes(self) -> int:
        return super().resident_bytes() + tensor_bytes([self.col_scale])
