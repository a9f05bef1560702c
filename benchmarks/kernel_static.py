"""Static speed check of the Triton kernels for sm_90, without a GPU: compile, disassemble, count.

    python -m benchmarks.kernel_static [--quick] [--out benchmarks/results]

Compiles every SSQR config the tuner can pick (kernels/ssqr/tuning.TILES, 2/3/4-bit, fp16 and
bf16 activations, with outliers) and the HPTQ decode-GEMV for GPUTarget("cuda", 90, 32) with
Triton's own ptxas, reads the cubin with the wheel's cuobjdump, and reports per kernel:
registers, spills (LOCAL bytes), shared memory, the global-load opcodes of the steady-state loop
(LDG.E.64/.128 and LDGSTS widths), whether HMMA / HGMMA / LDGSTS / UTMALDG appear, and SASS
instructions per weight (per decoded symbol for HPTQ) in the steady-state loop: the instructions
of the largest backward-branch span (for SSQR: the largest that holds the HMMA/HGMMA) divided by the weights (symbols) each thread consumes per
iteration. Then a roofline estimate per (shape, M) (assumptions in ASSUMPTIONS).
Writes kernels_static_sm90.{json,md}. `--quick` compiles one config (4-bit bf16, M=1 tile).
"""
from __future__ import annotations

import argparse
import collections
import datetime
import json
import math
import re
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SHAPES = {  # name: (K in, N out), Llama-3-8B/70B linears
    "4096x4096": (4096, 4096), "4096->14336": (4096, 14336), "14336->4096": (14336, 4096),
    "4096->6144": (4096, 6144), "8192x8192": (8192, 8192), "8192->28672": (8192, 28672),
}
M_VALUES = (1, 16, 128)
GROUP = 128
OUTLIER_RATE = 0.01
TARGETS = {"ssqr_instr_per_weight": {4: 2.5, 3: 3.0, 2: 2.5}, "hptq_instr_per_symbol": 10.0,
           "min_weight_load_bits": 64}
HPTQ_BITS = 3.3           # bits per weight in GPU memory assumed for the HPTQ roofline rows
HPTQ_PAIR_LATENCY = 100   # cycles per decoded symbol pair on one lane: two dependent L1 hits + ALU
SM_COUNT, CLOCK_HZ = 132, 1.755e9
HPTQ_TABLE_BYTES = 4096 * 4
ASSUMPTIONS = {
    "H100": dict(bandwidth_Bps=3.35e12, lane_instr_per_s=30e12, bf16_flops=0.7 * 989e12),
    "H200": dict(bandwidth_Bps=4.8e12, lane_instr_per_s=30e12, bf16_flops=0.7 * 989e12),
    "launch_s": 1.5e-6,
    "note": ("time = max(bytes / bandwidth, lane-instructions / issue rate) + launches x launch_s; "
             "lane-instructions = loop instructions per weight x N x K x M tiles (every M tile "
             "decodes the weights again; prologue, epilogue and split-K reduction not counted); "
             "issue rate 132 SMs x 4 schedulers x 32 lanes x 1.755 GHz; bf16 = max(2NK + 2(MK + "
             "MN) bytes / bandwidth, 2MNK / (0.7 x 989 TFLOPS)) + 1 launch; SSQR bytes = packed "
             "codes + fp16 scales (G=128) + 1 % outliers (int16 column + fp16 value per slot) + x + y "
             "+ the x[:, perm] gather (read + write x, its own launch); split-K partials stay in "
             "L2 and are not counted. HPTQ (M = 1 only): 3.3 bits/weight in GPU memory, "
             "instructions per symbol x N x K, one launch, and a third bound: each lane is a "
             "serial chain (~100 cycles per symbol pair assumed), lanes = N K / 256, so "
             "time >= 256 / 2 x 100 cycles / 1.755 GHz x max(1, lanes / (132 SMs x 2048 "
             "threads))."),
}
NOTES = [
    "SSQR bf16 4-bit: bf16 has 7 mantissa bits, so the magic-number conversion takes one nibble "
    "pair per shift (3 SHF per word, +0.375 instr/weight over fp16, which takes two pairs per "
    "shift); the tensor-core B operand goes through shared memory (STS + LDSM ≈ 0.3 instr/weight) "
    "because Triton chooses the dot-operand layout.",
    "SSQR M=128: the loop counts are per weight per 64/128-row tile (each M tile decodes the "
    "weights again); the group scale is applied to the fp32 accumulator per K tile (exact), which "
    "costs BLOCK_M·BLOCK_N/threads FFMA per tile.",
    "HPTQ: the 16 KB table is read through L1 (global memory): Triton's tl.gather keeps a table in "
    "shared memory but re-stores all of it before every gather (8 STS.128 + 2 BAR per thread per "
    "symbol step, measured), which costs more than it saves; a resident shared-memory table needs "
    "Gluon or CUDA. Two symbols share one two-word window load. Lanes are 256 codes of one row "
    "with a 32-bit start each (+0.125 bit/weight; no padding), so a 4096x4096 layer has 64K "
    "independent serial chains; the latency bound assumes ~100 cycles per symbol pair.",
    "No GPU was lent to the session that produced this file: benchmarks/gpu_check.sh has not run, "
    "the speedups below are estimates.",
]
_LINE = re.compile(r"/\*([0-9a-f]{4,})\*/\s+([^;]*);")
_BRANCH = re.compile(r"\bBRA\b.*?0x([0-9a-f]+)")


@dataclass
class SassStats:
    """What one cubin's SASS says (see module docstring)."""
    registers: int
    spill_bytes: int
    shared_bytes: int
    loop_instructions: int
    loop_opcodes: dict
    loop_global_loads: dict
    has: dict = field(default_factory=dict)


def _binary(name: str) -> str:
    import triton
    return str(Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / name)


def parse_sass(sass: str, contains: str = "") -> tuple[list[tuple[int, str]], tuple[int, int] | None]:
    """(address, instruction) list of a SASS listing, and the (start, end) addresses of the
    largest backward-branch span (the steady-state loop) holding an instruction that matches the
    regex `contains` (e.g. the MMA of a GEMM's main loop), None if there is no such loop."""
    code = [(int(a, 16), text.strip()) for a, text in _LINE.findall(sass)]
    best = None
    for addr, text in code:
        hit = _BRANCH.search(text)
        if hit and int(hit.group(1), 16) < addr:
            span = (int(hit.group(1), 16), addr)
            inside = [t for a, t in code if span[0] <= a <= span[1]]
            if not any(re.search(contains, t) for t in inside):
                continue
            if best is None or span[1] - span[0] > best[1] - best[0]:
                best = span
    return code, best


def _opcode(text: str) -> str:
    words = text.split()
    return words[1] if words[0].startswith("@") else words[0]


def sass_stats(kernel, loop_contains: str = "") -> SassStats:
    """Compile result (triton.compile) → SassStats via cuobjdump (loop: see parse_sass)."""
    with tempfile.TemporaryDirectory() as tmp:
        cubin = Path(tmp) / "k.cubin"
        cubin.write_bytes(kernel.asm["cubin"])
        sass = subprocess.run([_binary("cuobjdump"), "-sass", str(cubin)], check=True,
                              capture_output=True, text=True).stdout
        usage = subprocess.run([_binary("cuobjdump"), "--dump-resource-usage", str(cubin)],
                               check=True, capture_output=True, text=True).stdout
    res = dict(re.findall(r"(REG|LOCAL):(\d+)", usage))
    code, loop = parse_sass(sass, loop_contains)
    body = [t for a, t in code if loop and loop[0] <= a <= loop[1]]
    ops = collections.Counter(_opcode(t) for t in body)
    everything = collections.Counter(_opcode(t).split(".")[0] for _, t in code)
    return SassStats(
        registers=int(res.get("REG", 0)), spill_bytes=int(res.get("LOCAL", 0)),
        shared_bytes=int(kernel.metadata.shared), loop_instructions=len(body),
        loop_opcodes=dict(ops.most_common()),
        loop_global_loads={o: c for o, c in ops.items() if o.startswith(("LDG", "LDGSTS"))},
        has={name: everything[name] > 0 for name in ("HMMA", "HGMMA", "LDGSTS", "UTMALDG")})


def load_bits(opcode: str) -> int:
    """Width in bits of a global load opcode (LDG.E.128 → 128, LDGSTS.E.BYPASS.128 → 128, LDG.E → 32)."""
    for width in ("128", "64"):
        if f".{width}" in opcode:
            return int(width)
    return 16 if ".U16" in opcode or ".16" in opcode else 8 if ".U8" in opcode else 32


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
    kernel, symbols_per_thread_iter = static_compile(compile_sm90)
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


def ssqr_bytes(n: int, k: int, m: int, bits: int) -> float:
    cap = max(1, round(OUTLIER_RATE * k))
    return n * k * bits / 8 + 2 * n * k / GROUP + 4 * cap * n + 2 * (m * k + m * n) + 4 * m * k


def _bf16_s(n: int, k: int, m: int, a: dict) -> float:
    return max((2 * n * k + 2 * (m * k + m * n)) / a["bandwidth_Bps"],
               2 * m * n * k / a["bf16_flops"]) + ASSUMPTIONS["launch_s"]


def roofline(rows: list[dict]) -> list[dict]:
    """Predicted speedup over bf16 per (shape, M, bits, dtype) with the best compiled tile."""
    out = []
    for r in rows:
        if r["kernel"] != "hptq":
            continue
        for shape, (k, n) in SHAPES.items():
            for gpu in ("H100", "H200"):
                a = ASSUMPTIONS[gpu]
                t_mem = (n * k * HPTQ_BITS / 8 + 2 * (k + n)) / a["bandwidth_Bps"]
                t_issue = r["instr_per_symbol"] * n * k / a["lane_instr_per_s"]
                lanes = n * k / r["symbols_per_lane"]
                waves = max(1.0, lanes / (SM_COUNT * 2048))
                t_chain = r["symbols_per_lane"] / 2 * HPTQ_PAIR_LATENCY / CLOCK_HZ * waves
                bounds = {"memory": t_mem, "issue": t_issue, "latency": t_chain}
                t = max(bounds.values()) + ASSUMPTIONS["launch_s"]
                out.append(dict(shape=shape, m=1, bits="hptq", dtype="bf16", gpu=gpu, us=t * 1e6,
                                bf16_us=_bf16_s(n, k, 1, a) * 1e6, speedup=_bf16_s(n, k, 1, a) / t,
                                bound=max(bounds, key=bounds.get), config={}))
    for (bits, dtype, m), group in _best_by(rows).items():
        for shape, (k, n) in SHAPES.items():
            for gpu in ("H100", "H200"):
                a = ASSUMPTIONS[gpu]
                best = None
                for r in group:
                    m_tiles = math.ceil(m / r["config"]["BLOCK_M"])
                    t_issue = r["instr_per_weight"] * n * k * m_tiles / a["lane_instr_per_s"]
                    t_mem = ssqr_bytes(n, k, m, bits) / a["bandwidth_Bps"]
                    t = max(t_issue, t_mem) + 2 * ASSUMPTIONS["launch_s"]
                    if best is None or t < best[0]:
                        best = (t, t_mem, t_issue, r["config"])
                t_bf16 = _bf16_s(n, k, m, a)
                t, t_mem, t_issue, cfg = best
                out.append(dict(shape=shape, m=m, bits=bits, dtype=dtype, gpu=gpu,
                                us=t * 1e6, bf16_us=t_bf16 * 1e6, speedup=t_bf16 / t,
                                bound="memory" if t_mem >= t_issue else "issue", config=cfg))
    return out


def _best_by(rows: list[dict]) -> dict:
    groups: dict = collections.defaultdict(list)
    for r in rows:
        if r["kernel"] == "ssqr":
            groups[(r["bits"], r["dtype"], r["m_tile_for"])].append(r)
    return groups


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
            in_smem = r["shared_bytes"] >= HPTQ_TABLE_BYTES
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
