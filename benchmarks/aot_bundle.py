"""Build kernels/aot_sm90.zip: the SSQR and HPTQ kernels compiled for sm_90 with Triton ≥ 3.9.

    python -m benchmarks.aot_bundle [--out kernels/aot_sm90.zip]

Every variant goes through benchmarks.kernel_static.compile_sm90 with the kernel modules' own
`compile_spec` (the signature and constexprs their launchers use), so the cubins are the exact
SASS the static check counts. Variants: the configs the GPU check (benchmarks/gpu_check.sh) and a
Llama-3-8B-shaped model need, bf16 activations, no bias:
- SSQR 4- and 3-bit, G = 128, with outliers: every tile the tuner can pick (tuning.TILES) at
  M = 1, 16 (small tiles; 9 ≤ M ≤ 16), 64 (medium: 33 ≤ M ≤ 64, and M 17..32 on its 32-row tile)
  and 128 (large: any M ≥ 65). Other M (2..8) find no cubin (ValueError naming the variant).
- HPTQ lanes at K = 4096 and 14336: the fused decode-GEMV at every M it takes (BLOCK_M 1, 2, 4, 8)
  and the decode kernel (larger M: decode, then a torch matmul).
The index records, per variant, the launch metadata of Triton's compile and the parameters, and
per kernel the Triton `cache_key` of its source (tests/test_aot.py checks the bundle is fresh).
"""
from __future__ import annotations

import argparse
import hashlib
import json
import re
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "kernels" / "aot_sm90.zip"
SSQR_BITS = (4, 3)
SSQR_M = (1, 16, 64, 128)
SSQR_GROUP = 128
HPTQ_K = (4096, 14336)
META = ("num_warps", "num_ctas", "shared", "global_scratch_size", "global_scratch_align",
        "profile_scratch_size", "launch_cooperative_grid", "launch_pdl")


def ssqr_specs() -> list[dict]:
    """One dict per SSQR variant: the arguments of matmul.compile_spec plus the compile options."""
    from babai_kernels.ssqr.tuning import TILES, m_range
    out = []
    for bits in SSQR_BITS:
        for m in SSQR_M:
            for bm, bn, bk, warps, stages in TILES[m_range(m)]:
                cfg = dict(BLOCK_M=bm, BLOCK_N=bn, BLOCK_K=bk, num_warps=warps, num_stages=stages)
                out.append(dict(kernel="ssqr", bits=bits, act="bf16", group=SSQR_GROUP,
                                has_outliers=True, has_bias=False, cfg=cfg, m=m))
    return out


def hptq_specs() -> list[dict]:
    """One dict per HPTQ variant: the arguments of gemv.compile_spec."""
    from babai_kernels.hptq.gemv import fused_max_m
    from babai_kernels.hptq.lanes import SPAN
    out = []
    for k in HPTQ_K:
        top = fused_max_m(-(-k // SPAN) * SPAN)
        for m in sorted({1 << i for i in range(top.bit_length()) if 1 << i <= top}):
            out.append(dict(kernel="hptq", in_features=k, m=m, act="bf16", decode=False))
        out.append(dict(kernel="hptq", in_features=k, m=1, act="bf16", decode=True))
    return out


def spec_signature(spec: dict) -> tuple[object, dict, dict, tuple, int, int]:
    """(kernel function, signature, constexprs, ÷16 parameters, num_warps, num_stages) of a spec,
    from the kernel module's own compile_spec."""
    if spec["kernel"] == "ssqr":
        from babai_kernels.ssqr.matmul import DIVISIBLE, _ssqr_kernel, compile_spec
        cfg = spec["cfg"]
        sig, consts = compile_spec(spec["bits"], spec["act"], spec["group"], spec["has_outliers"],
                                   spec["has_bias"], cfg, spec["m"])
        fn, warps, stages = _ssqr_kernel, cfg["num_warps"], cfg["num_stages"]
    else:
        from babai_kernels.hptq.gemv import DIVISIBLE, _hptq_lanes_kernel, compile_spec
        sig, consts = compile_spec(spec["in_features"], spec["m"], spec["act"], False, spec["decode"])
        from babai_kernels.hptq.gemv import NUM_STAGES
        fn, warps, stages = _hptq_lanes_kernel, consts["NUM_WARPS"], NUM_STAGES
    divisible = tuple(d for d in DIVISIBLE if sig.get(d, "constexpr") != "constexpr")
    return fn, sig, consts, divisible, warps, stages


def spec_key(spec: dict) -> str:
    """The bundle key a spec compiles to (babai_kernels.aot.variant_key)."""
    from babai_kernels.aot import variant_key
    _, sig, consts, _, warps, stages = spec_signature(spec)
    return variant_key(spec["kernel"], consts, {n: t for n, t in sig.items() if t != "constexpr"}, warps,
                       stages)


def compile_variant(spec: dict):
    """(compiled kernel, signature, constexprs, divisible) of one spec (compile_sm90)."""
    from benchmarks.kernel_static import compile_sm90
    fn, sig, consts, divisible, warps, stages = spec_signature(spec)
    return compile_sm90(fn, sig, consts, warps, stages, divisible), sig, consts, divisible


def index_entry(spec: dict, kernel, sig: dict, divisible: tuple) -> dict:
    """The bundle's record of one compiled variant (babai_kernels.aot.Variant's fields)."""
    params = [(n, t) for n, t in sig.items() if t != "constexpr"]  # in argument order
    cubin = kernel.asm["cubin"]
    digest = hashlib.sha256(cubin).hexdigest()
    md = kernel.metadata
    return dict(kernel=spec["kernel"], key=spec_key(spec),
                cubin=f"{spec['kernel']}_{digest[:16]}.cubin", function=md.name, params=params,
                divisible=list(divisible), sha256=digest, spec=spec,
                **{k: getattr(md, k) for k in META})


def ptx_params(ptx: str, function: str) -> list[str]:
    """PTX types of `function`'s .entry parameters, in order (u64 pointers, u32, f32 …)."""
    entry = re.search(r"\.entry\s+" + re.escape(function) + r"\s*\((.*?)\)", ptx, re.S)
    if entry is None:
        raise ValueError(f"ptx: no .entry {function}")
    return re.findall(r"\.param\s+\.(\w+)", entry.group(1))


def source_keys() -> dict[str, str]:
    """Triton's cache_key of each kernel's source (with the jit functions it calls)."""
    from babai_kernels.hptq.gemv import _hptq_lanes_kernel
    from babai_kernels.ssqr.matmul import _ssqr_kernel
    return {"ssqr": _ssqr_kernel.cache_key, "hptq": _hptq_lanes_kernel.cache_key}


def build(out: Path = OUT, specs: list[dict] | None = None) -> dict:
    """Compile every spec and write the bundle; returns its index."""
    import triton
    specs = specs if specs is not None else ssqr_specs() + hptq_specs()
    unique = {}
    for spec in specs:                      # specs that compile to the same variant: the first
        unique.setdefault(spec_key(spec), spec)
    specs = list(unique.values())
    entries, cubins = [], {}
    for i, spec in enumerate(specs):
        kernel, sig, consts, divisible = compile_variant(spec)
        entry = index_entry(spec, kernel, sig, divisible)
        want = ["u64" if t.startswith("*") else {"i32": "u32", "fp32": "f32"}[t] for _, t in entry["params"]]
        if ptx_params(kernel.asm["ptx"], entry["function"]) != want + ["u64", "u64"]:
            raise ValueError(f"{spec}: the PTX entry's parameters are not the signature + 2 scratch pointers")
        entries.append(entry)
        cubins[entry["cubin"]] = kernel.asm["cubin"]
        print(f"[{i + 1}/{len(specs)}] {spec['kernel']} {json.dumps({k: v for k, v in spec.items() if k != 'kernel'})}: "
              f"{len(kernel.asm['cubin'])} B, shared {entry['shared']} B", flush=True)
    index = dict(triton=triton.__version__, target="sm_90", source=source_keys(), variants=entries)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".tmp")
    with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=9) as z:
        z.writestr("index.json", json.dumps(index, indent=1))
        for name in sorted(cubins):
            z.writestr(zipfile.ZipInfo(name, date_time=(2026, 1, 1, 0, 0, 0)), cubins[name],
                       compress_type=zipfile.ZIP_DEFLATED, compresslevel=9)
    tmp.replace(out)
    print(f"wrote {out}: {len(entries)} variants, {out.stat().st_size} B")
    return index


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args(argv)
    from babai_kernels.aot import MIN_TRITON, triton_version
    if (triton_version() or (0, 0)) < MIN_TRITON:
        print(f"benchmarks/aot_bundle.py compiles with Triton ≥ {'.'.join(map(str, MIN_TRITON))}, "
              f"this is {triton_version()}", file=sys.stderr)
        return 2
    build(args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
