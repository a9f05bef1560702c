"""Shared helpers for kernels/: Triton availability, input validation, bit accounting, and the tensor
names and headers of a checkpoint folder read from its safetensors files.

Depends on torch (and optionally triton) only — never on vllm.
"""
from __future__ import annotations

import functools
import json
import os
from pathlib import Path

import torch

from babai_kernels.contract import INDEX_NAME, SINGLE_SHARD_NAME


@functools.lru_cache(maxsize=None)
def triton_available() -> bool:
    """True if `import triton` works (it may still have no GPU driver)."""
    try:
        import triton  # noqa: F401
    except Exception:
        return False
    return True


def triton_interpret() -> bool:
    """True when TRITON_INTERPRET=1 (Triton kernels run on CPU tensors through numpy)."""
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


@functools.lru_cache(maxsize=None)
def gluon_available() -> bool:
    """True if the HPTQ Gluon kernel can run on CUDA: Triton ≥ 3.9 compiles it (Gluon's
    shared-memory gather and reinterpret), or, with an older Triton (the lent GPU image's 3.6) or
    none, its cubins launch from the AOT bundle (babai_kernels.aot; which K and dtypes it holds:
    hptq.gemv.launch_reason). Under TRITON_INTERPRET the kernel runs without it (kernels/gluon_interp.py)."""
    from babai_kernels import aot
    if aot.use_aot(torch.device("cuda")):
        try:
            return len(aot.bundle().variants) > 0
        except ValueError:
            return False
    try:
        from triton.experimental.gluon import language as gl
    except Exception:
        return False
    desc = gl.shared_memory_descriptor
    return hasattr(desc, "gather") and hasattr(desc, "reinterpret")


def use_triton(device: torch.device) -> bool:
    """Whether a Triton kernel can run on tensors of `device` (CUDA, or CPU under the interpreter)."""
    if not triton_available():
        return False
    if device.type == "cuda":
        return True
    return device.type == "cpu" and triton_interpret()


def check_tensor(name: str, t, *, dtype=None, ndim: int | None = None, shape=None,
                 device: torch.device | None = None, contiguous: bool = False) -> None:
    """Raise a ValueError naming `name` unless `t` is a tensor with the given properties.

    `dtype` may be one dtype or a tuple of allowed dtypes; `shape` entries of None are free.
    """
    if not isinstance(t, torch.Tensor):
        raise ValueError(f"{name}: expected a torch.Tensor, got {type(t).__name__}")
    if dtype is not None:
        allowed = dtype if isinstance(dtype, tuple) else (dtype,)
        if t.dtype not in allowed:
            raise ValueError(f"{name}: dtype {t.dtype} not in {[str(d) for d in allowed]}")
    if ndim is not None and t.dim() != ndim:
        raise ValueError(f"{name}: expected {ndim} dims, got shape {tuple(t.shape)}")
    if shape is not None:
        if t.dim() != len(shape) or any(s is not None and s != a for s, a in zip(shape, t.shape)):
            raise ValueError(f"{name}: expected shape {tuple(shape)}, got {tuple(t.shape)}")
    if device is not None and t.device != device:
        raise ValueError(f"{name}: on {t.device}, expected {device}")
    if contiguous and not t.is_contiguous():
        raise ValueError(f"{name}: must be contiguous")


def stored_bits(tensors: dict[str, torch.Tensor]) -> int:
    """Total stored size in bits of a layer's tensors (the honest numerator of bits/weight)."""
    return sum(t.numel() * t.element_size() * 8 for t in tensors.values())


def check_finite(name: str, t: torch.Tensor) -> None:
    """ValueError naming `name` and the first position of a NaN or ±inf in `t`."""
    bad = ~torch.isfinite(t)
    if bool(bad.any()):
        where = tuple(int(i) for i in bad.nonzero()[0])
        raise ValueError(f"{name}: non-finite value {t[where].item()} at index {where}")


def safetensors_headers(folder: str | Path) -> dict[str, dict]:
    """{tensor name: {"dtype", "shape", "data_offsets"}} of every tensor in a checkpoint folder's
    safetensors (the shards its index names, else model.safetensors), read from the file headers only."""
    folder = Path(folder)
    index = folder / INDEX_NAME
    files = sorted(set(json.loads(index.read_text())["weight_map"].values())) if index.is_file() \
        else [SINGLE_SHARD_NAME]
    tensors = {}
    for f in files:
        try:
            with open(folder / f, "rb") as fh:
                size = int.from_bytes(fh.read(8), "little")
                header = json.loads(fh.read(size))
        except (OSError, ValueError) as e:
            raise ValueError(f"{folder / f}: not a readable safetensors file ({e})") from None
        tensors.update((n, info) for n, info in header.items() if n != "__metadata__")
    return tensors


def safetensors_names(folder: str | Path) -> list[str]:
    """Every tensor name of a checkpoint folder's safetensors, read from the file headers only."""
    return list(safetensors_headers(folder))
