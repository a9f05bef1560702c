"""Static speed check of the Triton kernels for sm_90, without a GPU: compile, disassemble, count.

    python -m benchmarks.kernel_static [--quick] [--out benchmarks/results]

Compiles every SSQR config the tuner can pick (kernels/ssqr/tuning.TILES, 2/3/4-bit, fp16 and
bf16 activations, with outliers) and the HPTQ decode-GEMV for GPUTarget("cuda", 90, 32) with
Triton's own ptxas, reads the cubin with the wheel's cuobjdump, and reports per kernel:
registers, spills (stack-frame bytes: benchmarks.sass.resource_usage), shared memory, the global-load opcodes of the steady-state loop
(LDG.E.64/.128 and LDGSTS widths), whether HMMA / HGMMA / LDGSTS / UTMALDG appear, and SASS
instructions per weight (per decoded symbol for HPTQ) in the steady-state loop: the instructions
of the largest backward-branch span (for SSQR: the largest that holds the HMMA/HGMMA) divided by the weights (symbols) each thread consumes per
iteration. Then a roofline estimate per (shape, M) (assumptions in benchmarks.sass.ASSUMPTIONS).
Writes kernels_static_sm90.{json,md}. `--quick` compiles one config (4-bit bf16, M=1 tile).

This module holds the configs, the sm_90 compile, the acceptance verdicts, the report and the
CLI; reading the SASS and the roofline estimate are in benchmarks/sass.py.
"""
from __future__ import annotations

import argparse
import datetime
import json
import math
import sys
from pathlib import Path

from benchmarks.sass import ASSUMPTIONS, GROUP, SHAPES, load_bits, roofline, sass_stats

ROOT = Path(__file__).resolve().parents[1]
M_VALUES = (1, 16, 128)
TARGETS = {"ssqr_instr_per_weight": {4: 2.5, 3: 3.0, 2: 2.5}, "hptq_instr_per_symbol": 10.0,
           "min_weight_load_bits": 64}
# issue 14's speed targets over bf16: (bits, M) → speedup; the roofline is checked against them
SPEED_TARGETS = {(4, 1): 3.2, (4, 16): 2.8, (4, 128): 1.1, (3, 1): 4.0, ("hptq", 1): 1.0}
HPTQ_TABLE_BYTES = 1024 * 4
NOTES = [
    "SSQR bf16 4-bit: bf16 has 7 mantissa bits, so the magic-number conversion takes one nibble "
    "pair per shift (3 SHF per word); the HFMA2 that would turn 128 + u into z is skipped and the "
    "kernel subtracts 136·Σx per K tile from the fp32 dot instead (tiles.offset_codes), so a word "
    "of 8 codes costs 3 SHF + 4 LOP3. The tensor-core B operand goes through shared memory "
    "(STS + LDSM ≈ 0.3 instr/weight) because Triton chooses the dot-operand layout.",
    "SSQR M=128: the loop counts are per weight per 64/128-row tile (each M tile decodes the "
    "weights again); the group scale is applied to the fp32 accumulator per K tile (exact), which "
    "costs BLOCK_M·BLOCK_N/threads FFMA per tile.",
    "HPTQ (Gluon, kernels/hptq/gemv.py): the 4 KB code table (≤ 10-bit lane codes) and x as "
    "float32 live in shared memory; per step a lane loads three stream words, makes a 64-bit "
    "window with two funnel shifts and decodes four symbols (SHF + SHF + LOP3 + LDS each, the "
    "offset is the raw running sum of table entries), then one LDS.128 gives x for the four "
    "columns and four FFMA accumulate; one barrier after the prologue, none in the loop. Stream "
    "words are 32-bit loads at a bit-aligned position (L1 hits: a lane's next step reads the same "
    "or the next words), so the 64-bit weight-load criterion applies to SSQR only. Lanes are 128 "
    "codes of one row (short serial chains); a lane starts at an int32 base per 16 lanes + an "
    "int16 offset (0.14 bit/weight). On SmolLM2 the GPU layout holds HPTQ-3.15/3.3/3.8/4.3 in "
    "3.35/3.51/4.03/4.55 bits/weight against 3.15/3.29/3.80/4.31 stored (benchmarks/results/"
    "quality.md, 'GPU bits': the 10-bit code limit, lane starts and a 4 KB table per small "
    "linear); the roofline's 3.3 bits in GPU memory is about HPTQ-3.15's. Warps grow with K (spans / 4, 4..16) "
    "so a thread keeps four chains; spans round up to a power of two, and the padding lanes "
    "decode too (counted against the real symbols: 9.5 instr/symbol at K = 14336).",
    "Speed targets the design cannot reach (estimates): SSQR 4-bit/3-bit at M = 1 and 16 are "
    "memory-bound, and the 4.45 stored bits (4 + fp16 scale per 128 + 1 % outliers at 32 bits) cap "
    "any kernel at 16 / 4.45 = 3.6x before launches; the model adds two launches (x[:, perm] gather "
    "+ GEMM, 1.5 µs each), which on 4096x4096 (bf16 8.5–11.5 µs) alone hold the speedup under 3x, "
    "so 3.2x (4-bit) and 4.0x (3-bit) are predicted only on the largest shapes; on H200 3-bit is "
    "issue-bound as well (2.94 instr/weight against a budget near 3). SSQR M=128 misses on "
    "4096x4096 H200 only (1.09x fp16; bf16 0.90–1.02x on H200), issue-bound: each 128-row M tile "
    "decodes the weights again at 6–12 instr/weight with HGMMA. HPTQ M=1 is issue-bound on every target shape since its lanes are 128 "
    "symbols (with 256-symbol lanes 4096x4096 on H200 was latency-bound at 0.97x).",
    "Spills are read from cuobjdump's STACK (before 2026-12-05 this check read LOCAL, which ptxas "
    "leaves at 0, and reported 0 spills everywhere): the SSQR tiles for M ≥ 16 spill (LDL/STL in "
    "the M = 16 loops too); M = 1 tiles and HPTQ have none.",
    "The lent GPU image (Triton 3.6) launches these exact cubins from kernels/aot_sm90.zip "
    "(babai_kernels.aot, built by benchmarks/aot_bundle.py); Triton 3.6's own compile of the same "
    "kernels: kernels_static_versions.md (scripts/triton36_check.sh).",
    "No GPU was lent to the session that produced this file: benchmarks/gpu_check.sh has not run, "
    "the speedups below are estimates.",
]


def compile_sm90(fn, signature: dict, constexprs: dict, num_warps: int, num_stages: int,
                 divisible: tuple[str, ...]):
    """triton.compile for sm_90 (no GPU needed) of a Triton or Gluon kernel; `divisible` args are
    specialized ÷16 as at launch."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource
    from triton.experimental.gluon._runtime import GluonASTSource
    names = list(signature)
    attrs = {(names.index(a),): [["tt.divisibility", 16]] for a in divisible}
    source = GluonASTSource if fn.is_gluon() else ASTSource
    src = source(fn=fn, signature=signature, constexprs=constexprs, attrs=attrs)
    return triton.compile(src, target=GPUTarget("cuda", 90, 32),
                          options=dict(num_warps=num_warps, num_stages=num_stages))


def ssqr_kernel_stats(bits: int, dtype: str, cfg: dict, m: int) -> dict:
    """Compile the SSQR kernel as `launch` would at M = m (M = 1 specializes to a constant)."""
    from babai_kernels.ssqr.matmul import DIVISIBLE, _ssqr_kernel, compile_spec
    sig, consts = compile_spec(bits, dtype, GROUP, True, False, cfg, m)
    kernel = compile_sm90(_ssqr_kernel, sig, consts, cfg["num_warps"], cfg["num_stages"], DIVISIBLE)
    stats = sass_stats(kernel, loop_contains=r"\bH(G)?MMA")
    weights = consts["BLOCK_K"] * cfg["BLOCK_N"] / (32 * cfg["num_warps"])
    return dict(kernel="ssqr", bits=bits, dtype=dtype, m_tile_for=m,
                config={**cfg, "BLOCK_K": consts["BLOCK_K"]}, **stats.__dict__,
                weights_per_thread_iter=weights,
                instr_per_weight=stats.loop_instructions / weights,
                weight_load_bits=max((load_bits(o) for o in stats.loop_global_loads), default=0))


def hptq_kernel_stats(in_features: int = 4096, m: int = 1) -> dict:
    """Compile the HPTQ decode-GEMV (kernels/hptq/gemv.py) at K = in_features, M = m; per decoded symbol."""
    from babai_kernels.hptq.gemv import static_compile
    from babai_kernels.hptq.lanes import SPAN
    kernel, symbols_per_thread_iter = static_compile(compile_sm90, in_features, m)
    stats = sass_stats(kernel)
    return dict(kernel="hptq", in_features=in_features, m_tile_for=m,
                num_warps=kernel.metadata.num_warps, **stats.__dict__,
                symbols_per_thread_iter=symbols_per_thread_iter, symbols_per_lane=SPAN,
                instr_per_symbol=stats.loop_instructions / symbols_per_thread_iter,
                weight_load_bits=max((load_bits(o) for o in stats.loop_global_loads), default=0))


def hptq_configs(quick: bool) -> list[tuple[int, int]]:
    """(K, M) for the HPTQ decode-GEMV: every K of the target shapes at M = 1 and at the largest
    M the fused path takes (x staged in shared memory, gemv_fits)."""
    from babai_kernels.hptq.gemv import fused_max_m
    from babai_kernels.hptq.lanes import SPAN
    ks = (4096,) if quick else sorted({k for k, _ in SHAPES.values()})
    out = []
    for k in ks:
        top = fused_max_m(-(-k // SPAN) * SPAN)
        out += [(k, 1)] + ([(k, top)] if top > 1 and not quick else [])
    return out


def ssqr_configs(quick: bool) -> list[tuple[int, str, dict, int]]:
    """(bits, dtype, cfg, M) for every tile config the tuner can pick at M in M_VALUES."""
    from babai_kernels.ssqr.tuning import TILES, m_range
    if quick:
        (bm, bn, bk, warps, stages) = TILES["small"][0]
        return [(4, "bf16", dict(BLOCK_M=bm, BLOCK_N=bn, BLOCK_K=bk, num_warps=warps,
                                 num_stages=stages), 1)]
    out = []
    for m in M_VALUES:
        for bm, bn, bk, warps, stages in TILES[m_range(m)]:
            cfg = dict(BLOCK_M=bm, BLOCK_N=bn, BLOCK_K=bk, num_warps=warps, num_stages=stages)
            out += [(bits, dtype, cfg, m) for bits in (4, 3, 2) for dtype in ("bf16", "fp16")]
    return out


def verdicts(rows: list[dict]) -> list[str]:
    """One line per acceptance target of issue 14 that the static numbers can decide."""
    lines = []
    ssqr = [r for r in rows if r["kernel"] == "ssqr"]
    for bits, limit in TARGETS["ssqr_instr_per_weight"].items():
        for dtype in ("fp16", "bf16"):
            cands = [r for r in ssqr if r["bits"] == bits and r["dtype"] == dtype and r["m_tile_for"] == 1]
            if cands:
                best = min(r["instr_per_weight"] for r in cands)
                lines.append(f"SSQR {bits}-bit {dtype} M=1: best {best:.2f} instr/weight "
                             f"(target ≤ {limit}): {'PASS' if best <= limit else 'FAIL'}")
    if ssqr:
        narrow = [r for r in ssqr if r["weight_load_bits"] < TARGETS["min_weight_load_bits"]]
        lines.append(f"weight loads ≥ 64 bit: {'PASS' if not narrow else 'FAIL'} "
                     f"(narrowest {min(r['weight_load_bits'] for r in ssqr)} bit)")
        big = [r for r in ssqr if r["config"]["BLOCK_M"] >= 64]
        if big:
            lines.append(f"M≥64 tiles use HGMMA: {'PASS' if all(r['has']['HGMMA'] for r in big) else 'FAIL'}")
    spills = [r for r in rows if r["spill_bytes"] > 0]
    worst = max(spills, key=lambda r: r["spill_bytes"]) if spills else None
    lines.append("0 spills on every config: " + ("PASS" if not spills else
                 f"FAIL ({len(spills)} of {len(rows)} configs have a stack frame, all at "
                 f"M ≥ {min(r.get('m_tile_for', 1) for r in spills)}; worst {worst['spill_bytes']} B)"))
    hptq = [r for r in rows if r["kernel"] == "hptq" and r["m_tile_for"] == 1]
    if hptq:
        worst = max(hptq, key=lambda r: r["instr_per_symbol"])
        ok = worst["instr_per_symbol"] <= TARGETS["hptq_instr_per_symbol"]
        # one shared-memory read per decoded symbol, and room for the whole table
        in_smem = all(r["shared_bytes"] >= HPTQ_TABLE_BYTES and sum(
            n for o, n in r["loop_opcodes"].items() if o.startswith("LDS")) >= r["symbols_per_thread_iter"]
            for r in hptq)
        lines.append(f"HPTQ M=1: worst {worst['instr_per_symbol']:.1f} instr/symbol (K={worst['in_features']}; "
                     f"target ≤ 10), table in {'shared memory' if in_smem else 'global memory (L1)'}: "
                     f"{'PASS' if ok and in_smem else 'FAIL'}")
    return lines


def speed_target_lines(roofline_rows: list[dict]) -> list[str]:
    """Per speed target: the predicted range and the (shape, GPU) pairs predicted below it with
    their bound (best dtype), i.e. what the design cannot reach under the stated assumptions."""
    lines = []
    for (bits, m), goal in SPEED_TARGETS.items():
        best: dict[tuple[str, str], dict] = {}
        for r in roofline_rows:
            if r["bits"] == bits and r["m"] == m:
                key = (r["shape"], r["gpu"])
                if key not in best or r["speedup"] > best[key]["speedup"]:
                    best[key] = r
        if not best:
            continue
        rows = list(best.values())
        low = sorted((r for r in rows if r["speedup"] < goal), key=lambda r: r["speedup"])
        name = "HPTQ" if bits == "hptq" else f"SSQR {bits}-bit"
        head = (f"{name} M={m} ≥ {goal}x: predicted {min(r['speedup'] for r in rows):.2f}–"
                f"{max(r['speedup'] for r in rows):.2f}x; ")
        misses = ", ".join(f"{r['shape']} {r['gpu']} {r['speedup']:.2f}x ({r['bound']})" for r in low)
        lines.append(head + (f"below on {len(low)} of {len(rows)}: {misses}" if low else "met on every shape"))
    return lines


def to_markdown(result: dict) -> str:
    lines = [f"# Static kernel check, sm_90 ({result['date']})", "",
             f"triton {result['triton']} · torch {result['torch']} · target {result['target']} · "
             f"command `{result['command']}`", "", "## Verdicts", ""]
    lines += [f"- {v}" for v in result["verdicts"]]
    lines += ["", "## Speed targets against the roofline estimate", ""]
    lines += [f"- {v}" for v in result["speed_targets"]]
    lines += ["", "## Notes", ""] + [f"- {n}" for n in result["notes"]]
    lines += ["", "## Kernels", "", "| kernel | bits | dtype | M | tile (M×N×K, warps, stages) | "
              "regs | spill B | smem B | loop instr | per weight/symbol | loop global loads | "
              "HMMA | HGMMA | LDGSTS | TMA |", "|" + "---|" * 16]
    for r in result["kernels"]:
        c = r.get("config", {})
        tile = (f"{c['BLOCK_M']}×{c['BLOCK_N']}×{c['BLOCK_K']}, {c['num_warps']}, {c['num_stages']}"
                if c else f"K={r['in_features']}, 32 rows × {r['symbols_per_lane']}-code lanes, "
                f"{r['num_warps']} warps")
        per = r.get("instr_per_weight", r.get("instr_per_symbol"))
        loads = ", ".join(f"{o}×{n}" for o, n in r["loop_global_loads"].items())
        h = r["has"]
        lines.append(f"| {r['kernel']} | {r.get('bits', '')} | {r.get('dtype', '')} | "
                     f"{r.get('m_tile_for', 1)} | {tile} | {r['registers']} | {r['spill_bytes']} | "
                     f"{r['shared_bytes']} | {r['loop_instructions']} | {per:.2f} | {loads} | "
                     f"{'y' if h['HMMA'] else ''} | {'y' if h['HGMMA'] else ''} | "
                     f"{'y' if h['LDGSTS'] else ''} | {'y' if h['UTMALDG'] else ''} |")
    lines += ["", "## Roofline estimate (speedup over bf16)", "", ASSUMPTIONS["note"], "",
              "| shape | M | bits | dtype | GPU | µs | bf16 µs | speedup | bound |", "|" + "---|" * 9]
    for r in result["roofline"]:
        lines.append(f"| {r['shape']} | {r['m']} | {r['bits']} | {r['dtype']} | {r['gpu']} | "
                     f"{r['us']:.1f} | {r['bf16_us']:.1f} | {r['speedup']:.2f}x | {r['bound']} |")
    return "\n".join(lines) + "\n"


def run(quick: bool = False, hptq: bool = True) -> dict:
    import torch
    import triton
    rows = []
    for bits, dtype, cfg, m in ssqr_configs(quick):
        rows.append(ssqr_kernel_stats(bits, dtype, cfg, m))
        print(f"ssqr {bits}-bit {dtype} M={m} {cfg}: {rows[-1]['instr_per_weight']:.2f} instr/weight, "
              f"{rows[-1]['registers']} regs, {rows[-1]['spill_bytes']} B spill", flush=True)
    for k, m in hptq_configs(quick) if hptq else []:
        rows.append(hptq_kernel_stats(k, m))
        print(f"hptq K={k} M={m}: {rows[-1]['instr_per_symbol']:.2f} instr/symbol, "
              f"{rows[-1]['registers']} regs, {rows[-1]['spill_bytes']} B spill", flush=True)
    return dict(date=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
                triton=triton.__version__, torch=torch.__version__, target="cuda sm_90 (warp 32)",
                command="python -m benchmarks.kernel_static" + (" --quick" if quick else ""),
                assumptions=ASSUMPTIONS, targets=TARGETS, kernels=rows, roofline=roofline(rows),
                verdicts=verdicts(rows), speed_targets=speed_target_lines(roofline(rows)),
                notes=NOTES)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="one SSQR config and HPTQ only")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    args = parser.parse_args(argv)
    result = run(args.quick)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "kernels_static_sm90.json").write_text(json.dumps(result, indent=1))
    (args.out / "kernels_static_sm90.md").write_text(to_markdown(result))
    print("\n".join(result["verdicts"]))
    print(f"wrote {args.out}/kernels_static_sm90.{{json,md}}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
