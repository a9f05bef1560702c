"""Static speed check of the Triton kernels for sm_90, without a GPU: compile, disassemble, count.

    python -m benchmarks.kernel_static [--quick] [--out benchmarks/results]

Compiles every SSQR config the tuner can pick (kernels/ssqr/tuning.TILES, 2/3/4-bit, fp16 and
bf16 activations, with outliers) and the HPTQ decode-GEMV for GPUTarget("cuda", 90, 32) with
Triton's own ptxas, reads the cubin with the wheel's cuobjdump, and reports per kernel:
registers, spills (LOCAL bytes), shared memory, the global-load opcodes of the steady-state loop
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

from benchmarks.sass import ASSUMPTIONS, GROUP, load_bits, roofline, sass_stats

ROOT = Path(__file__).resolve().parents[1]
M_VALUES = (1, 16, 128)
TARGETS = {"ssqr_instr_per_weight": {4: 2.5, 3: 3.0, 2: 2.5}, "hptq_instr_per_symbol": 10.0,
           "min_weight_load_bits": 64}
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
    "columns and four FFMA accumulate. Stream words are 32-bit loads at a bit-aligned position "
    "(L1 hits: a lane's next step reads the same or the next words), so the 64-bit weight-load "
    "criterion applies to SSQR only. Lanes are 256 codes of one row with a 32-bit start each "
    "(+0.125 bit/weight); the 10-bit limit costs +0.03 (HPTQ-3.3) and +0.05 (HPTQ-4.3) bit/weight "
    "against the file's 12-bit code (measured on the serving checkpoints). A 4096x4096 layer has "
    "64K independent serial chains; the latency bound assumes ~100 cycles per symbol pair.",
    "No GPU was lent to the session that produced this file: benchmarks/gpu_check.sh has not run, "
    "the speedups below are estimates.",
]


def compile_sm90(fn, signature: dict, constexprs: dict, num_warps: int, num_stages: int,
                 divisible: tuple[str, ...]):
    """triton.compile for sm_90 (no GPU needed); `divisible` args are specialized ÷16 as at launch."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource
    names = list(signature)
    attrs = {(names.index(a),): [["tt.divisibility", 16]] for a in divisible}
    src = ASTSource(fn=fn, signature=signature, constexprs=constexprs, attrs=attrs)
    return triton.compile(src, target=GPUTarget("cuda", 90, 32),
                          options=dict(num_warps=num_warps, num_stages=num_stages))


def ssqr_kernel_stats(bits: int, dtype: str, cfg: dict, m: int) -> dict:
    """Compile the SSQR kernel as `launch` would at M = m (M = 1 specializes to a constant)."""
    from babai_kernels.ssqr.matmul import _ssqr_kernel
    act = {"fp16": "*fp16", "bf16": "*bf16"}[dtype]
    sig = dict(x_ptr=act, qw_ptr="*i32", sc_ptr="*fp16", ocol_ptr="*i16", oval_ptr="*fp16",
               cap="i32", bias_ptr=act, out_ptr=act, ws_ptr="*fp32", lock_ptr="*i32", M="i32",
               N="i32", K="i32", split_k="i32")
    consts = dict(GROUP=GROUP, BITS=bits, HAS_OUTLIERS=True, HAS_BIAS=False, BLOCK_M=cfg["BLOCK_M"],
                  BLOCK_N=cfg["BLOCK_N"], BLOCK_K=min(cfg["BLOCK_K"], GROUP),
                  BLOCK_MO=min(cfg["BLOCK_M"], 1 << math.ceil(math.log2(m))), SLAB=16,
                  STAGES=cfg["num_stages"], USE_ASM=True, DOT_FP32=False)
    if m == 1:
        sig["M"] = "constexpr"
        consts["M"] = 1
    divisible = ("x_ptr", "qw_ptr", "sc_ptr", "ocol_ptr", "oval_ptr", "bias_ptr", "out_ptr",
                 "ws_ptr", "lock_ptr", "N", "K")
    kernel = compile_sm90(_ssqr_kernel, sig, consts, cfg["num_warps"], cfg["num_stages"], divisible)
    stats = sass_stats(kernel, loop_contains=r"\bH(G)?MMA")
    weights = consts["BLOCK_K"] * cfg["BLOCK_N"] / (32 * cfg["num_warps"])
    return dict(kernel="ssqr", bits=bits, dtype=dtype, m_tile_for=m,
                config={**cfg, "BLOCK_K": consts["BLOCK_K"]}, **stats.__dict__,
                weights_per_thread_iter=weights,
                instr_per_weight=stats.loop_instructions / weights,
                weight_load_bits=max((load_bits(o) for o in stats.loop_global_loads), default=0))


def hptq_kernel_stats() -> dict:
    """Compile the HPTQ decode-GEMV (kernels/hptq/gemv.py) at M = 1; per decoded symbol."""
    from babai_kernels.hptq.gemv import static_compile
    from babai_kernels.hptq.lanes import SPAN
    kernel, symbols_per_thread_iter = static_compile()
    stats = sass_stats(kernel)
    return dict(kernel="hptq", **stats.__dict__, symbols_per_thread_iter=symbols_per_thread_iter,
                symbols_per_lane=SPAN,
                instr_per_symbol=stats.loop_instructions / symbols_per_thread_iter,
                weight_load_bits=max((load_bits(o) for o in stats.loop_global_loads), default=0))


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
    lines.append(f"0 spills on every config: {'PASS' if not spills else f'FAIL ({len(spills)} spill)'}")
    for r in rows:
        if r["kernel"] == "hptq":
            ok = r["instr_per_symbol"] <= TARGETS["hptq_instr_per_symbol"]
            # one shared-memory read per decoded symbol, and room for the whole table
            lds = sum(n for o, n in r["loop_opcodes"].items() if o.startswith("LDS"))
            in_smem = (r["shared_bytes"] >= HPTQ_TABLE_BYTES
                       and lds >= r["symbols_per_thread_iter"])
            lines.append(f"HPTQ: {r['instr_per_symbol']:.1f} instr/symbol (target ≤ 10), table in "
                         f"{'shared memory' if in_smem else 'global memory (L1)'}: "
                         f"{'PASS' if ok and in_smem else 'FAIL'}")
    return lines


def to_markdown(result: dict) -> str:
    lines = [f"# Static kernel check, sm_90 ({result['date']})", "",
             f"triton {result['triton']} · torch {result['torch']} · target {result['target']} · "
             f"command `{result['command']}`", "", "## Verdicts", ""]
    lines += [f"- {v}" for v in result["verdicts"]]
    lines += ["", "## Notes", ""] + [f"- {n}" for n in result["notes"]]
    lines += ["", "## Kernels", "", "| kernel | bits | dtype | M | tile (M×N×K, warps, stages) | "
              "regs | spill B | smem B | loop instr | per weight/symbol | loop global loads | "
              "HMMA | HGMMA | LDGSTS | TMA |", "|" + "---|" * 16]
    for r in result["kernels"]:
        c = r.get("config", {})
        tile = (f"{c['BLOCK_M']}×{c['BLOCK_N']}×{c['BLOCK_K']}, {c['num_warps']}, {c['num_stages']}"
                if c else "")
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
    if hptq:
        rows.append(hptq_kernel_stats())
        print(f"hptq: {rows[-1]['instr_per_symbol']:.2f} instr/symbol", flush=True)
    return dict(date=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
                triton=triton.__version__, torch=torch.__version__, target="cuda sm_90 (warp 32)",
                command="python -m benchmarks.kernel_static" + (" --quick" if quick else ""),
                assumptions=ASSUMPTIONS, targets=TARGETS, kernels=rows, roofline=roofline(rows),
                verdicts=verdicts(rows), notes=NOTES)


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
