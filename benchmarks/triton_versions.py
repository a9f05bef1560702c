"""SASS of the GPU check's kernels under two Tritons and in the AOT bundle, side by side (sm_90).

    python -m benchmarks.triton_versions compile --dir D   # in each venv: this Triton's compile
    python -m benchmarks.triton_versions bundle --dir D    # the shipped cubins (kernels/aot_sm90.zip)
    python -m benchmarks.triton_versions report --dir D [--out benchmarks/results]

`compile` runs benchmarks.kernel_static's ssqr_kernel_stats / hptq_kernel_stats (its compile_sm90
and benchmarks.sass) on the configs the GPU check launches — SSQR 4/3-bit bf16 with outliers, every
tuner tile at M = 1, 16, 128; the HPTQ decode-GEMV at K = 4096 and 14336, M = 1 and the largest
fused M — and writes D/triton-<version>.json; a config that does not compile is recorded with its
error. `bundle` counts the bundled cubins' loops with the same reader (no Triton 3.9 needed).
`report` joins them into kernels_static_versions.{json,md}. scripts/triton36_check.sh runs all.
"""
from __future__ import annotations

import argparse
import json
import sys
import types
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
M_VALUES = (1, 16, 128)
HPTQ_K = (4096, 14336)


def configs() -> list[dict]:
    """The specs benchmarks.aot_bundle builds for the check's M values (one per compiled variant)."""
    from benchmarks.aot_bundle import hptq_specs, ssqr_specs
    from babai_kernels.hptq.gemv import fused_max_m
    from babai_kernels.hptq.lanes import SPAN
    out = [s for s in ssqr_specs() if s["m"] in M_VALUES]
    tops = {k: fused_max_m(-(-k // SPAN) * SPAN) for k in HPTQ_K}
    return out + [s for s in hptq_specs() if not s["decode"] and s["m"] in (1, tops[s["in_features"]])]


def label(spec: dict) -> str:
    if spec["kernel"] == "ssqr":
        c = spec["cfg"]
        return (f"ssqr {spec['bits']}-bit M={spec['m']} {c['BLOCK_M']}x{c['BLOCK_N']}x{c['BLOCK_K']} "
                f"w{c['num_warps']}")
    return f"hptq K={spec['in_features']} M={spec['m']}"


def _per(stats: dict, spec: dict) -> float:
    """Loop instructions per weight (SSQR) or per decoded symbol (HPTQ), as kernel_static counts."""
    return stats.get("instr_per_weight", stats.get("instr_per_symbol"))


def compile_all(directory: Path) -> Path:
    import triton
    from benchmarks.kernel_static import hptq_kernel_stats, ssqr_kernel_stats
    rows = []
    for spec in configs():
        try:
            if spec["kernel"] == "ssqr":
                st = ssqr_kernel_stats(spec["bits"], spec["act"], spec["cfg"], spec["m"])
            else:
                st = hptq_kernel_stats(spec["in_features"], spec["m"])
            row = dict(label=label(spec), loop_instructions=st["loop_instructions"], per=_per(st, spec),
                       registers=st["registers"], spill_bytes=st["spill_bytes"],
                       top_opcodes=dict(list(st["loop_opcodes"].items())[:6]))
        except Exception as e:  # noqa: BLE001  (recorded: a kernel this Triton cannot compile)
            row = dict(label=label(spec), error=f"{type(e).__name__}: {str(e).strip().splitlines()[-1][:160]}")
        rows.append(row)
        print(json.dumps(row), flush=True)
    path = directory / f"triton-{triton.__version__}.json"
    path.write_text(json.dumps(dict(triton=triton.__version__, rows=rows), indent=1))
    return path


def bundle_all(directory: Path) -> Path:
    """Loop counts of the bundled cubins for the same configs (sass.sass_stats on each cubin)."""
    from babai_kernels import aot
    from benchmarks.aot_bundle import spec_key
    from benchmarks.sass import sass_stats
    b = aot.Bundle()
    rows = []
    for spec in configs():
        v = b.variants[spec_key(spec)]
        kernel = types.SimpleNamespace(asm={"cubin": b.cubins[v.cubin]},
                                       metadata=types.SimpleNamespace(shared=v.shared))
        loop = r"\bH(G)?MMA" if spec["kernel"] == "ssqr" else ""
        st = sass_stats(kernel, loop_contains=loop)
        rows.append(dict(label=label(spec), cubin=v.cubin, loop_instructions=st.loop_instructions,
                         registers=st.registers, spill_bytes=st.spill_bytes))
    with zipfile.ZipFile(aot.BUNDLE) as z:
        built_with = json.loads(z.read("index.json"))["triton"]
    path = directory / "bundle.json"
    path.write_text(json.dumps(dict(triton=built_with, bytes=aot.BUNDLE.stat().st_size,
                                    variants=len(b.variants), rows=rows), indent=1))
    return path


def report(directory: Path, out: Path) -> str:
    """Join D/triton-*.json and D/bundle.json into kernels_static_versions.{json,md}; returns the md."""
    runs = sorted((json.loads(p.read_text()) for p in directory.glob("triton-*.json")),
                  key=lambda r: [int(x) for x in r["triton"].split(".")[:2]])
    bundle = json.loads((directory / "bundle.json").read_text())
    labels = [r["label"] for r in bundle["rows"]]
    by = {r["triton"]: {row["label"]: row for row in r["rows"]} for r in runs}
    cubins = {r["label"]: r for r in bundle["rows"]}
    head = ["config"] + [f"Triton {t}: loop instr (per weight/symbol), regs, stack B" for t in by] + \
           [f"AOT cubin (built with {bundle['triton']}): loop instr"]
    lines = ["# SASS under two Tritons and in the AOT bundle (sm_90)", "",
             "Command: `bash scripts/triton36_check.sh`. Steady-state loop instructions as "
             "benchmarks/kernel_static.py counts them (per weight for SSQR, per decoded symbol for HPTQ); "
             f"the bundle (`kernels/aot_sm90.zip`, {bundle['variants']} cubins, {bundle['bytes']} bytes) "
             "is what the lent image launches (babai_kernels.aot).", "",
             "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name in labels:
        cells = [name]
        for rows in by.values():
            r = rows.get(name)
            cells.append("–" if r is None else f"does not compile ({r['error']})" if "error" in r else
                         f"{r['loop_instructions']} ({r['per']:.2f}), {r['registers']}, {r.get('spill_bytes', '?')}")
        cells.append(str(cubins[name]["loop_instructions"]))
        lines.append("| " + " | ".join(cells) + " |")
    md = "\n".join(lines) + "\n"
    out.mkdir(parents=True, exist_ok=True)
    (out / "kernels_static_versions.json").write_text(json.dumps(dict(runs=runs, bundle=bundle), indent=1))
    (out / "kernels_static_versions.md").write_text(md)
    return md


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("action", choices=["compile", "bundle", "report"])
    parser.add_argument("--dir", type=Path, required=True)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    args = parser.parse_args(argv)
    args.dir.mkdir(parents=True, exist_ok=True)
    if args.action == "compile":
        print(f"wrote {compile_all(args.dir)}")
    elif args.action == "bundle":
        print(f"wrote {bundle_all(args.dir)}")
    else:
        print(report(args.dir, args.out), end="")
    return 0


if __name__ == "__main__":
    sys.exit(main())
