"""Ahead-of-time compiled kernels: cubins built with Triton ≥ 3.9, launched without it.

Where the CUDA Triton is older than MIN_TRITON (the lent GPU image has 3.6: the HPTQ Gluon
kernel does not compile there, and 3.6's SSQR loop is 1.5x longer), the kernels run from cubins
compiled here with Triton 3.9 (benchmarks/aot_bundle.py, through benchmarks.kernel_static's
compile_sm90: the exact SASS the static check judges) and launched through libcuda with ctypes
(cuModuleLoadData, cuLaunchKernel), as Triton 3.9's own launcher does
(triton/backends/nvidia/driver.py, driver.c): the kernel's parameters are its non-constexpr
arguments in order, then two scratch pointers (global, profile; NULL when the sizes are 0); block
= 32·num_warps threads; dynamic shared memory = metadata.shared, opted in above 48 KB.

Bundle `aot_sm90.zip` (beside this file): `index.json` (a list of variants: kernel, key, cubin
name, function name, parameters with types, the parameters specialized ÷16, launch metadata,
sha256) and one cubin per variant. A variant's key is the kernel name, its constexprs, its
parameter types, num_warps and num_stages (`variant_key`); a launch looks its key up and refuses (ValueError naming what
is missing) a key the bundle lacks, a tensor of the wrong dtype or device, or an argument that
breaks a ÷16 specialization. VLLM_BABAI_TRITON_LAUNCH=aot|jit forces a route (default: aot on
CUDA with Triton < 3.9 or none, jit otherwise).
"""
from __future__ import annotations

import contextlib
import ctypes
import functools
import hashlib
import json
import os
import threading
import zipfile
from dataclasses import dataclass
from pathlib import Path

import torch

MIN_TRITON = (3, 9)
TARGET = "sm_90"                      # the bundle's cubins run on compute capability 9.0 only
BUNDLE = Path(__file__).resolve().parent / "aot_sm90.zip"
LAUNCH_ENV = "VLLM_BABAI_TRITON_LAUNCH"
DIVISIBILITY = 16
SMEM_DEFAULT = 48 * 1024
CU_FUNC_ATTRIBUTE_SHARED_SIZE_BYTES = 1            # static shared memory of a function
CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES = 8
CU_DEVICE_ATTRIBUTE_MAX_SHARED_MEMORY_PER_BLOCK_OPTIN = 97
POINTER_DTYPES = {"*bf16": torch.bfloat16, "*fp16": torch.float16, "*fp32": torch.float32,
                  "*i8": torch.int8, "*i16": torch.int16, "*i32": torch.int32, "*i64": torch.int64}
SCALARS = {"i32": (ctypes.c_int32, -2**31, 2**31 - 1), "i64": (ctypes.c_int64, -2**63, 2**63 - 1),
           "u32": (ctypes.c_uint32, 0, 2**32 - 1), "fp32": (ctypes.c_float, None, None)}


class MissingVariant(ValueError):
    """The bundle has no cubin for a launch's constexprs and argument types."""


def triton_version() -> tuple[int, int] | None:
    """(major, minor) of the importable Triton, None if none."""
    try:
        import triton
    except Exception:
        return None
    major, minor = triton.__version__.split(".")[:2]
    return int(major), int(minor)


_dry_log: list | None = None     # set inside `dry_run`


@contextlib.contextmanager
def dry_run():
    """Within: every kernel launch (any device) resolves its bundled variant and packs its
    arguments as on the GPU, then appends (kernel, variant, grid) to the yielded list instead of
    running (benchmarks/gpu_check.sh --dry-run; tests)."""
    global _dry_log
    outer, _dry_log = _dry_log, []
    try:
        yield _dry_log
    finally:
        _dry_log = outer


def use_aot(device: torch.device) -> bool:
    """Whether kernels on `device` launch from the AOT bundle instead of Triton's JIT: on CUDA when
    Triton is missing or older than MIN_TRITON, unless VLLM_BABAI_TRITON_LAUNCH says otherwise
    (and every launch inside `dry_run`)."""
    if _dry_log is not None:
        return True
    if device.type != "cuda" or os.environ.get("TRITON_INTERPRET", "0") == "1":
        return False
    forced = os.environ.get(LAUNCH_ENV, "").strip().lower()
    if forced not in ("", "aot", "jit"):
        raise ValueError(f"{LAUNCH_ENV}={forced!r}: expected 'aot' or 'jit' (or unset)")
    if forced:
        return forced == "aot"
    version = triton_version()
    return version is None or version < MIN_TRITON


def jit_available() -> bool:
    """Whether a kernel the bundle lacks may still be compiled by the importable (older) Triton: the
    SSQR kernel compiles with Triton 3.6 (slower SASS, benchmarks/results/kernels_static_versions.md);
    never inside `dry_run`, where every launch must come from the bundle."""
    return _dry_log is None and triton_version() is not None and os.environ.get(LAUNCH_ENV, "").strip().lower() != "aot"


def type_of(value) -> str:
    """Triton signature type of a launch argument: '*bf16' … for tensors, 'i32' for ints, 'fp32'
    for floats (the bundle compiles every int as i32 and every float as fp32)."""
    if isinstance(value, torch.Tensor):
        for name, dtype in POINTER_DTYPES.items():
            if value.dtype == dtype:
                return name
        raise ValueError(f"no pointer type for a {value.dtype} tensor")
    if isinstance(value, bool):
        raise ValueError("a bool launch argument must be a constexpr")
    if isinstance(value, int):
        return "i32"
    if isinstance(value, float):
        return "fp32"
    raise ValueError(f"no launch type for {type(value).__name__}")


def variant_key(kernel: str, constexprs: dict, params: dict[str, str], num_warps: int,
                num_stages: int) -> str:
    """Canonical key of a compiled variant: kernel name, constexprs, parameter types (by name) and
    the compile options."""
    return json.dumps([kernel, sorted((k, v) for k, v in constexprs.items()), sorted(params.items()),
                       num_warps, num_stages], separators=(",", ":"))


@dataclass(frozen=True)
class Variant:
    """One cubin of the bundle and what launching it needs (Triton's compile metadata)."""
    kernel: str
    key: str
    cubin: str                              # member name in the bundle
    function: str                           # the kernel's symbol in the cubin
    params: tuple[tuple[str, str], ...]     # (argument, type) of each kernel parameter, in order
    divisible: tuple[str, ...]              # parameters compiled as multiples of 16 (bytes for pointers)
    num_warps: int
    num_ctas: int
    shared: int
    global_scratch_size: int
    global_scratch_align: int
    profile_scratch_size: int
    launch_cooperative_grid: bool
    launch_pdl: bool
    sha256: str

    @classmethod
    def from_json(cls, d: dict) -> "Variant":
        d = dict(d, params=tuple(tuple(p) for p in d["params"]), divisible=tuple(d["divisible"]))
        return cls(**{k: d[k] for k in cls.__dataclass_fields__})


def pack_args(variant: Variant, args: dict) -> list:
    """ctypes values of the kernel parameters for `args` (name → tensor / int / float), in the
    variant's parameter order, followed by the global and profile scratch pointers (NULL: the
    bundle's kernels need none; `launch` refuses variants that do). ValueError naming the
    argument on a missing argument, a wrong type, an out-of-range int, or a broken ÷16
    specialization."""
    missing = [name for name, _ in variant.params if name not in args]
    if missing:
        raise ValueError(f"{variant.kernel}: missing launch arguments {missing}")
    out = []
    for name, ty in variant.params:
        value = args[name]
        if ty.startswith("*"):
            if not isinstance(value, torch.Tensor) or value.dtype != POINTER_DTYPES[ty]:
                got = value.dtype if isinstance(value, torch.Tensor) else type(value).__name__
                raise ValueError(f"{name}: expected a {POINTER_DTYPES[ty]} tensor, got {got}")
            address = value.data_ptr()
            if name in variant.divisible and address % DIVISIBILITY:
                raise ValueError(f"{name}: the cubin assumes a 16-byte aligned address, got {address:#x}")
            out.append(ctypes.c_uint64(address))
        else:
            ctype, lo, hi = SCALARS[ty]
            if ty == "fp32":
                out.append(ctype(float(value)))
                continue
            if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
                raise ValueError(f"{name}: expected an int in [{lo}, {hi}] ({ty}), got {value!r}")
            if name in variant.divisible and value % DIVISIBILITY:
                raise ValueError(f"{name}: the cubin assumes a multiple of 16, got {value}")
            out.append(ctype(value))
    return out + [ctypes.c_uint64(0), ctypes.c_uint64(0)]


class Bundle:
    """The variants of a bundle file (index checked: every cubin present, sha256 matching)."""

    def __init__(self, path: Path | None = None):
        self.path = Path(path or BUNDLE)
        if not self.path.is_file():
            raise ValueError(f"AOT bundle {self.path} is missing: build it with "
                             "`python -m benchmarks.aot_bundle` (Triton ≥ 3.9)")
        with zipfile.ZipFile(self.path) as z:
            index = json.loads(z.read("index.json"))
            self.cubins = {name: z.read(name) for name in z.namelist() if name != "index.json"}
        self.triton = index["triton"]
        self.target = index["target"]
        if self.target != TARGET:
            raise ValueError(f"AOT bundle {self.path} holds {self.target} cubins, this module launches {TARGET}")
        self.variants = {}
        for d in index["variants"]:
            v = Variant.from_json(d)
            data = self.cubins.get(v.cubin)
            if data is None or hashlib.sha256(data).hexdigest() != v.sha256:
                raise ValueError(f"AOT bundle {self.path}: cubin {v.cubin} is missing or corrupt")
            self.variants[v.key] = v

    def find(self, kernel: str, constexprs: dict, types: dict[str, str], num_warps: int,
             num_stages: int) -> Variant:
        """The variant compiled for these constexprs, parameter types (name → Triton type; names
        in `constexprs` are ignored) and options; MissingVariant (a ValueError) otherwise."""
        types = {n: t for n, t in types.items() if n not in constexprs}
        variant = self.variants.get(variant_key(kernel, constexprs, types, num_warps, num_stages))
        if variant is None:
            have = sum(v.kernel == kernel for v in self.variants.values())
            raise MissingVariant(f"AOT bundle has no {kernel} cubin for {constexprs}, num_warps={num_warps}, "
                                 f"num_stages={num_stages}, argument types {types} ({have} {kernel} "
                                 "variants; add it in benchmarks/aot_bundle.py)")
        return variant


@functools.lru_cache(maxsize=None)
def bundle() -> Bundle:
    """The package's bundle, read once."""
    return Bundle()


class _Driver:
    """The few libcuda entry points a launch needs (ctypes; the library is loaded on first use)."""

    def __init__(self, lib=None):
        self.lib = lib if lib is not None else ctypes.CDLL("libcuda.so.1")
        self.functions: dict[tuple[int, str], ctypes.c_void_p] = {}
        self.lock = threading.Lock()
        self.primary: dict[int, ctypes.c_void_p] = {}   # device → its primary context (torch's)

    def check(self, result: int, what: str) -> None:
        if result != 0:
            name = ctypes.c_char_p()
            self.lib.cuGetErrorName(result, ctypes.byref(name))
            raise RuntimeError(f"{what} failed: CUDA error {result} "
                               f"({name.value.decode() if name.value else 'unknown'})")

    def function(self, variant: Variant, device: torch.device) -> ctypes.c_void_p:
        """The CUfunction of `variant` in `device`'s primary context (loaded once per device)."""
        index = device.index if device.index is not None else torch.cuda.current_device()
        with self.lock:
            fn = self.functions.get((index, variant.key))
            if fn is not None:
                return fn
            capability = torch.cuda.get_device_capability(index)
            if capability != (9, 0):
                raise ValueError(f"{variant.kernel}: the AOT cubins are {TARGET}, cuda:{index} is "
                                 f"sm_{capability[0]}{capability[1]} (install Triton ≥ 3.9)")
            self.ensure_context(index)
            module, fn = ctypes.c_void_p(), ctypes.c_void_p()
            cubin = bundle().cubins[variant.cubin]
            self.check(self.lib.cuModuleLoadData(ctypes.byref(module), cubin), "cuModuleLoadData")
            self.check(self.lib.cuModuleGetFunction(ctypes.byref(fn), module,
                                                    variant.function.encode()),
                       "cuModuleGetFunction")
            if variant.shared > SMEM_DEFAULT:    # opt in as Triton's loader: all the room left
                optin, static = ctypes.c_int(), ctypes.c_int()
                self.check(self.lib.cuDeviceGetAttribute(
                    ctypes.byref(optin), CU_DEVICE_ATTRIBUTE_MAX_SHARED_MEMORY_PER_BLOCK_OPTIN,
                    ctypes.c_int(index)), "cuDeviceGetAttribute")
                self.check(self.lib.cuFuncGetAttribute(
                    ctypes.byref(static), CU_FUNC_ATTRIBUTE_SHARED_SIZE_BYTES, fn), "cuFuncGetAttribute")
                room = optin.value - static.value
                if variant.shared > room:
                    raise ValueError(f"{variant.kernel}: needs {variant.shared} B of dynamic shared "
                                     f"memory, the device allows {room}")
                self.check(self.lib.cuFuncSetAttribute(
                    fn, CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES, ctypes.c_int(room)),
                    "cuFuncSetAttribute")
            self.functions[(index, variant.key)] = fn
            return fn

    def ensure_context(self, index: int) -> None:
        """Make device `index`'s primary context (the one torch uses) current on this thread."""
        primary = self.primary.get(index)
        if primary is None:
            self.check(self.lib.cuInit(0), "cuInit")
            primary = ctypes.c_void_p()
            self.check(self.lib.cuDevicePrimaryCtxRetain(ctypes.byref(primary), ctypes.c_int(index)),
                       "cuDevicePrimaryCtxRetain")
            self.primary[index] = primary
        current = ctypes.c_void_p()
        self.check(self.lib.cuCtxGetCurrent(ctypes.byref(current)), "cuCtxGetCurrent")
        if current.value != primary.value:
            self.check(self.lib.cuCtxSetCurrent(primary), "cuCtxSetCurrent")

    def launch(self, variant: Variant, grid: tuple[int, int, int], params: list,
               device: torch.device, stream: int) -> None:
        """cuLaunchKernel of `variant` on `stream` (a CUstream handle) with the packed `params`."""
        fn = self.function(variant, device)
        self.ensure_context(device.index if device.index is not None else torch.cuda.current_device())
        stream = ctypes.c_void_p(stream)
        pointers = (ctypes.c_void_p * len(params))(*[ctypes.addressof(p) for p in params])
        gx, gy, gz = grid
        self.check(self.lib.cuLaunchKernel(
            fn, ctypes.c_uint(gx * variant.num_ctas), ctypes.c_uint(gy), ctypes.c_uint(gz),
            ctypes.c_uint(32 * variant.num_warps), ctypes.c_uint(1), ctypes.c_uint(1),
            ctypes.c_uint(variant.shared), stream, pointers, None), f"cuLaunchKernel({variant.kernel})")


@functools.lru_cache(maxsize=None)
def _driver() -> _Driver:
    return _Driver()


def launch(kernel: str, grid: tuple[int, ...], args: dict, constexprs: dict, num_warps: int,
           num_stages: int) -> None:
    """Launch `kernel` from the bundle on the current stream of the tensors' device; `args` maps
    every argument name to its value (constexprs included or not), `grid` has 1-3 entries."""
    variant = bundle().find(kernel, constexprs, {n: type_of(v) for n, v in args.items() if n not in constexprs},
                            num_warps, num_stages)
    if (variant.num_ctas != 1 or variant.global_scratch_size or variant.profile_scratch_size
            or variant.launch_cooperative_grid or variant.launch_pdl):
        raise ValueError(f"{kernel}: the AOT launcher takes single-CTA kernels without scratch, "
                         "cooperative grids or PDL")
    tensors = [v for v in args.values() if isinstance(v, torch.Tensor)]
    device = tensors[0].device
    if any(t.device != device for t in tensors) or (device.type != "cuda" and _dry_log is None):
        raise ValueError(f"{kernel}: AOT launch needs every tensor on one CUDA device, got "
                         f"{sorted({str(t.device) for t in tensors})}")
    grid = tuple(grid) + (1,) * (3 - len(grid))
    params = pack_args(variant, args)
    if _dry_log is not None:
        _dry_log.append((kernel, variant, grid))
    elif min(grid) > 0:
        _driver().launch(variant, grid, params, device, torch.cuda.current_stream(device).cuda_stream)
