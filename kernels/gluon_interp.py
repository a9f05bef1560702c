"""The Gluon names our kernels use, mapped onto triton.language, so a Gluon kernel runs under
TRITON_INTERPRET=1 (Triton 3.9's interpreter has no Gluon).

A kernel module imports `gl` from here instead of `triton.experimental.gluon.language` when
interpreting, and decorates with `triton.jit`. Layouts become None (the interpreter has no
threads); a shared-memory allocation is the tensor it was filled with, and `gather`, `index`,
`reinterpret` and `load` act on that tensor with the same results as on the device. Each
function looks up `tl.<name>` when called, so it gets the interpreter's patched builtin.
Only what kernels/ uses is here; an unknown name fails at import of the kernel, not silently.
"""
from __future__ import annotations

import math

import triton.language as tl

constexpr = tl.constexpr
int32, int64, uint32, float32, float16, bfloat16 = (tl.int32, tl.int64, tl.uint32, tl.float32,
                                                    tl.float16, tl.bfloat16)


def _layout(*args, **kwargs) -> None:
    return None


BlockedLayout = SliceLayout = SwizzledSharedLayout = _layout


def arange(start, end, layout=None):
    return tl.arange(start, end)


def load(pointer, mask=None, other=None):
    return tl.load(pointer, mask=mask, other=other)


def store(pointer, value, mask=None):
    return tl.store(pointer, value, mask=mask)


def program_id(axis):
    return tl.program_id(axis)


def zeros(shape, dtype, layout=None):
    return tl.zeros(shape, dtype)


def join(a, b):
    return tl.join(a, b)


def reshape(x, shape):
    return tl.reshape(x, shape)


def convert_layout(x, layout, assert_trivial=False):
    return x


def sum(x, axis):  # noqa: A001  (Gluon's name)
    return tl.sum(x, axis)


def barrier():
    return tl.debug_barrier()


def inline_asm_elementwise(*args, **kwargs):
    raise NotImplementedError("inline PTX does not run under TRITON_INTERPRET: pass USE_ASM=False")


def allocate_shared_memory(element_ty, shape, layout, value=None):
    if value is None:
        raise NotImplementedError("gluon_interp: shared memory must be allocated with its value")
    return SharedMemory(value)


class SharedMemory:
    """A shared-memory descriptor over the register tensor it holds."""

    def __init__(self, value):
        self.value = value

    def load(self, layout=None):
        return self.value

    def gather(self, indices, axis):
        return tl.gather(self.value, indices, axis)

    def reinterpret(self, dtype, shape, layout):
        if dtype != self.value.dtype:
            raise NotImplementedError("gluon_interp: reinterpret keeps the element type")
        return SharedMemory(tl.reshape(self.value, shape))

    def index(self, i):
        """Sub-view [i] along the first dimension."""
        rest = list(self.value.shape[1:])
        flat = tl.reshape(self.value, [self.value.shape[0], math.prod(rest)])
        row = tl.gather(flat, tl.full([1, math.prod(rest)], i, tl.int32), 0)
        return SharedMemory(tl.reshape(row, rest))
