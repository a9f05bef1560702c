"""`BabaiLinear`: what a quantized `nn.Linear` of a transformers model becomes.

Before loading it holds one empty placeholder buffer per checkpoint tensor of its format (the
tensor's stored dtype, so transformers loads each tensor bit for bit); `spec()` hands the loaded
tensors to the shared loading rules (babai_kernels.layer_spec.shard_layer: every tensor checked,
errors naming the module and tensor), `adopt(spec)` to the kernel chooser (babai_kernels.chooser)
and drops them: afterwards the module holds only the chosen kernel's resident tensors.

Inference only: no gradient flows through it (a backward raises, naming the layer), nothing can be
merged into it, and it cannot move to another device after loading (load on the target device).
"""
from __future__ import annotations

import torch

from babai_kernels.chooser import choose_kernel
from babai_kernels.contract import BabaiCheckpointConfig, tensor_dtype
from babai_kernels.layer_spec import FORMATS, LinearSpec, Sibling, shard_layer


class _NoBackward(torch.autograd.Function):
    """Identity on the kernel's output whose backward refuses (the kernels have no backward)."""

    @staticmethod
    def forward(ctx, y, layer):
        ctx.layer = layer
        return y.view_as(y)

    @staticmethod
    def backward(ctx, grad):
        raise RuntimeError(f"{ctx.layer}: babai linears are inference-only: no gradient flows through a quantized "
                           "layer (not trainable; adapters such as LoRA cannot train through it)")


class BabaiLinear(torch.nn.Module):
    """y = x Wᵀ (+ bias) for x (..., in_features) in the model's float dtype, W a babai-quantized
    (out_features, in_features) matrix served by the kernel the chooser picked for this layer."""

    def __init__(self, name: str, fmt: str, in_features: int, out_features: int, bias: bool,
                 dtype: torch.dtype | None, optional: tuple[str, ...] = ()):
        super().__init__()
        self.name, self.format = name, fmt
        self.in_features, self.out_features = in_features, out_features
        self.tensor_names = (*FORMATS[fmt].tensor_names, *optional)   # optional: e.g. HPTQ v2's col_steps
        for tensor in self.tensor_names:
            self.register_buffer(tensor, torch.empty(0, dtype=getattr(torch, tensor_dtype(fmt, tensor))))
        self.bias = torch.nn.Parameter(torch.empty(out_features, dtype=dtype), requires_grad=False) if bias else None
        self.kernel = None
        self.act_dtype: torch.dtype | None = None
        self.stored_bytes = 0

    def spec(self, config: BabaiCheckpointConfig, act_dtype: torch.dtype) -> LinearSpec:
        """The loaded tensors, validated by the shared loading rules (shard_layer: ValueError naming
        the module and tensor), as the kernel chooser's input."""
        tensors = {n: getattr(self, n) for n in self.tensor_names}
        device = next(iter(tensors.values())).device
        if device.type == "meta":
            raise ValueError(f"{self.name}: the checkpoint's tensors were not loaded into this layer")
        return shard_layer(FORMATS[self.format], [Sibling(self.name, {n: t.cpu() for n, t in tensors.items()},
                                                          None, self.out_features)],
                           self.in_features, None, device, config, act_dtype)

    def adopt(self, spec: LinearSpec, kernel=None) -> None:
        """Drop the loaded tensors and keep only the resident form of the kernel chosen for `spec`
        (`kernel`: one already built for `spec`, e.g. an on-device copy of an identical layer's, as
        benchmarks/gpu_e2e.py gives each layer of a model; default: the chooser builds it)."""
        for n in self.tensor_names:
            delattr(self, n)
        self.kernel = kernel if kernel is not None else choose_kernel(spec, self.name)
        self.act_dtype, self.device, self.stored_bytes = spec.act_dtype, spec.device, spec.stored_bytes()

    def resident_bytes(self) -> int:
        """Bytes the kernel keeps for the quantized weight (bias excluded)."""
        return self.kernel.resident_bytes()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.kernel is None:
            raise RuntimeError(f"{self.name}: not built (load the checkpoint with from_pretrained)")
        if x.device != self.device:
            raise RuntimeError(f"{self.name}: input on {x.device}, the layer's kernel on {self.device}; load the "
                               f"checkpoint on that device (from_pretrained(..., device_map=...))")
        y = self.kernel.apply(x.reshape(-1, self.in_features).to(self.act_dtype).contiguous(), self.bias)
        y = y.reshape(*x.shape[:-1], self.out_features).to(x.dtype)
        if torch.is_grad_enabled() and x.requires_grad:
            y = _NoBackward.apply(y, self.name)
        return y

    def _apply(self, fn, recurse=True):
        """`.to()`/`.cuda()`/`.half()`: a dtype change is fine (inputs are cast to the kernel's dtype),
        a device change is refused: the kernel's resident form was built for its device."""
        if self.kernel is not None:
            moved = fn(torch.empty(0, device=self.device))
            if moved.device != self.device:
                raise RuntimeError(f"{self.name}: a babai layer cannot move from {self.device} to {moved.device} "
                                   "after loading; load the checkpoint there (from_pretrained(..., device_map=...))")
        return super()._apply(fn, recurse)

    def extra_repr(self) -> str:
        kernel = getattr(self.kernel, "name", type(self.kernel).__name__) if self.kernel is not None else "unbuilt"
        return (f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}, "
                f"format={self.format}, kernel={kernel}")
