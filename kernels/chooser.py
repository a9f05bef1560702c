"""The kernel chooser: per platform, an ordered list of kernels; the first that can implement a
layer serves it (vLLM's `choose_mp_linear_kernel` pattern, importable without vLLM).

    CPU : BabaiLutCPU → TorchInt4CPU → TorchInt8CPU → [engine kernels] → TorchReference
          (HuffmanDecodeCPU first when VLLM_BABAI_HPTQ_RUNTIME=huffman)
    CUDA: TritonSSQR (SSQR) → HuffmanLanes (HPTQ) → TritonHPTQDense (HPTQ) → [engine kernels]
          → TorchReference

`choose_kernel(spec, layer)` skips names in VLLM_DISABLED_KERNELS, builds the winner, and logs once
per (format, shape, dtype, platform) the winner and the reason of every kernel ranked above it, on
the standard logger "vllm.babai" (vLLM's own logger tree). TorchReference (a dense float copy) is
logged as a warning. `plan(spec)` makes the same decision without building anything.
"""
from __future__ import annotations

import logging
import os

from babai_kernels.choices.base import BabaiKernel
from babai_kernels.choices.cpu import BabaiLutCPU, TorchInt4CPU, TorchInt8CPU
from babai_kernels.choices.cuda import HuffmanLanes, TritonHPTQDense, TritonSSQR
from babai_kernels.choices.reference import HuffmanDecodeCPU, TorchReference
from babai_kernels.layer_spec import LinearSpec

logger = logging.getLogger("vllm.babai")

KERNELS: dict[str, list[type[BabaiKernel]]] = {
    "cpu": [HuffmanDecodeCPU, BabaiLutCPU, TorchInt4CPU, TorchInt8CPU, TorchReference],
    "cuda": [TritonSSQR, HuffmanLanes, TritonHPTQDense, TorchReference],
}
_logged: set = set()


def register_kernel(cls: type[BabaiKernel], before: str = "TorchReference") -> None:
    """Add an engine's kernel to each platform of `cls.platforms`, ahead of `before` (idempotent)."""
    for platform in cls.platforms:
        kernels = KERNELS[platform]
        if cls not in kernels:
            kernels.insert([k.__name__ for k in kernels].index(before), cls)


def disabled_kernels() -> set[str]:
    return {name.strip() for name in os.environ.get("VLLM_DISABLED_KERNELS", "").split(",") if name.strip()}


def plan(spec: LinearSpec) -> tuple[type[BabaiKernel] | None, list[str]]:
    """(the kernel class that serves `spec`, or None; "Name: reason" of each kernel ranked above it)."""
    kernels = KERNELS.get(spec.device.type)
    if kernels is None:
        return None, [f"no babai kernels for device type {spec.device.type!r} (have {sorted(KERNELS)})"]
    reasons = []
    for cls in kernels:
        if cls.__name__ in disabled_kernels():
            reasons.append(f"{cls.__name__}: disabled by VLLM_DISABLED_KERNELS")
            continue
        ok, reason = cls.can_implement(spec)
        if ok:
            return cls, reasons
        reasons.append(f"{cls.__name__}: {reason}")
    return None, reasons


def choose_kernel(spec: LinearSpec, layer: str) -> BabaiKernel:
    """The kernel that serves `spec`, built; ValueError naming `layer` (and the checkpoint's bad
    tensor, or every kernel's reason when none can serve it)."""
    try:
        cls, reasons = plan(spec)
        if cls is None:
            raise ValueError(f"no babai kernel can serve {spec.format} {spec.shape[0]}x{spec.shape[1]} "
                             f"({spec.act_dtype} on {spec.device}):\n  " + "\n  ".join(reasons))
        kernel = cls(spec)
    except ValueError as e:
        raise ValueError(f"{layer}: {e}" if not str(e).startswith(layer) else str(e)) from None
    name = getattr(kernel, "name", cls.__name__)
    key = (spec.format, spec.shape, spec.act_dtype, spec.device.type, name)
    if key not in _logged:
        _logged.add(key)
        refused = f"; ranked above it: {'; '.join(reasons)}" if reasons else ""
        log = logger.warning if cls is TorchReference else logger.info
        variant = getattr(kernel, "variant", None)
        log("babai kernel for %s %dx%d (%s, %s): %s (%s%.2f resident bits/weight)%s%s", spec.format, *spec.shape,
            str(spec.act_dtype).removeprefix("torch."), spec.device.type, name,
            f"{variant} variant, " if variant else "", 8 * kernel.resident_bytes() / (spec.shape[0] * spec.shape[1]),
            " (dense float32 weights)" if cls is TorchReference else "", refused)
    return kernel
