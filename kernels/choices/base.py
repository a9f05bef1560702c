"""The interface every babai kernel implements (vLLM's MPLinearKernel pattern, without vLLM).

A kernel class says whether it can serve a layer (`can_implement(spec) -> (ok, reason)`, never
touching a device, so the decision is testable anywhere), builds its resident form from the spec
(`__init__`: only the tensors it keeps), and runs `apply(x (M, K), bias) -> (M, N)` in x's dtype.
"""
from __future__ import annotations

import torch

from babai_kernels import runtime
from babai_kernels.layer_spec import LinearSpec
from babai_kernels.runtime import DenseResidual


def tensor_bytes(tensors) -> int:
    """Bytes held by the tensors among `tensors` (others are ignored)."""
    return sum(t.numel() * t.element_size() for t in tensors if isinstance(t, torch.Tensor))


class BabaiKernel:
    """A kernel: `can_implement(spec) -> (ok, reason)`; `__init__(spec)` keeps only its resident
    tensors, on spec.device; `apply(x (M, K), bias) -> (M, N)` in x's dtype; `resident_bytes()`."""

    platforms: tuple[str, ...] = ()      # device types it serves ("cpu", "cuda")
    col_scale: torch.Tensor | None = None   # (K,) float32 on the device: HPTQ's per-column steps α, applied to x

    def set_col_scale(self, spec: LinearSpec) -> None:
        """Keep HPTQ's per-column steps α (K,) (runtime.hptq_col_scale; None without) on spec.device."""
        scale = runtime.hptq_col_scale(spec.parts) if spec.format == "hptq" else None
        self.col_scale = None if scale is None else scale.to(spec.device)

    def scaled(self, x: torch.Tensor) -> torch.Tensor:
        """x (M, K) ⊙ α (runtime.scale_input): y = Z·(α ⊙ x)·s; x itself without per-column steps."""
        return runtime.scale_input(x, self.col_scale)

    @classmethod
    def can_implement(cls, spec: LinearSpec) -> tuple[bool, str | None]:
        raise NotImplementedError

    def apply(self, x: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        raise NotImplementedError

    def resident_bytes(self) -> int:
        raise NotImplementedError


class DenseResidualKernel(BabaiKernel):
    """y = (dense(x_stored) + x_stored @ Rᵀ) · row_scale (+ bias): a dense kernel over the runtime
    layout's codes, plus the residual (one embedding_bag) — for kernels that are not our own."""

    dense_bits: int | None = None        # the dense width it asks the spec for (None: the default)

    def __init__(self, spec: LinearSpec):
        layout, to = spec.dense_layout(self.dense_bits), (lambda t: None if t is None else t.to(spec.device))
        self.perm, self.row_scale, self.col_scale = to(layout.perm), to(layout.row_scale), to(layout.col_scale)
        residual = layout.residual.parts()
        self.residual = None if residual is None else tuple(to(t) for t in residual)
        self.packed = self.pack(layout)

    def pack(self, layout: DenseResidual) -> dict[str, torch.Tensor]:
        raise NotImplementedError

    def dense(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def apply(self, x, bias):
        xs = runtime.permute_input(self.scaled(x), self.perm)
        y = runtime.add_residual(self.dense(xs), self.residual, xs)
        if self.row_scale is not None:
            y = y * self.row_scale
        if bias is not None:
            y = y + bias.float()
        return y.to(x.dtype)

    def resident_bytes(self) -> int:
        return tensor_bytes([*self.packed.values(), self.perm, self.row_scale, self.col_scale,
                             *(self.residual or ())])
