"""SASS reading and the roofline estimate for benchmarks.kernel_static (sm_90, no GPU needed).

SASS: `sass_stats` disassembles a triton.compile result's cubin with the Triton wheel's cuobjdump
and reads registers, spills (the per-thread stack frame: cuobjdump's STACK; its LOCAL stays 0
when ptxas spills) and shared memory; `parse_sass` finds the steady-state
loop, the largest backward-branch span (optionally the largest holding an instruction that matches
a regex, e.g. the MMA), whose instructions and global-load opcodes are counted; `load_bits` gives
a load opcode's width.

Roofline: `roofline` turns the per-kernel loop counts into predicted times and speedups over bf16
per (shape, M) on H100 and H200, under the figures and formula in ASSUMPTIONS.
"""
from __future__ import annotations

import collections
import math
import re
import subprocess
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

SHAPES = {  # name: (K in, N out), Llama-3-8B/70B linears
    "4096x4096": (4096, 4096), "4096->14336": (4096, 14336), "14336->4096": (14336, 4096),
    "4096->6144": (4096, 6144), "8192x8192": (8192, 8192), "8192->28672": (8192, 28672),
}
GROUP = 128               # SSQR quantization group: weights per fp16 scale
OUTLIER_RATE = 0.01
HPTQ_BITS = 3.3           # bits per weight in GPU memory assumed for the HPTQ roofline rows
HPTQ_PAIR_LATENCY = 100   # cycles per decoded symbol pair on one lane: two dependent L1 hits + ALU
SM_COUNT, CLOCK_HZ = 132, 1.755e9
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
             "serial chain of L symbols (L = 128; ~100 cycles per symbol pair assumed), lanes = N K / L, "
             "so time >= L / 2 x 100 cycles / 1.755 GHz x max(1, lanes / (132 SMs x 2048 "
             "threads))."),
}
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


def resource_usage(text: str) -> tuple[int, int]:
    """(registers, spill bytes) of the kernel in `cuobjdump --dump-resource-usage` output; spills
    are the stack frame (STACK, plus LOCAL where a toolchain reports them there)."""
    res = {k: int(v) for k, v in re.findall(r"\b(REG|STACK|LOCAL):(\d+)", text)}
    return res.get("REG", 0), res.get("STACK", 0) + res.get("LOCAL", 0)


def sass_stats(kernel, loop_contains: str = "") -> SassStats:
    """Compile result (triton.compile) → SassStats via cuobjdump (loop: see parse_sass)."""
    with tempfile.TemporaryDirectory() as tmp:
        cubin = Path(tmp) / "k.cubin"
        cubin.write_bytes(kernel.asm["cubin"])
        sass = subprocess.run([_binary("cuobjdump"), "-sass", str(cubin)], check=True,
                              capture_output=True, text=True).stdout
        usage = subprocess.run([_binary("cuobjdump"), "--dump-resource-usage", str(cubin)],
                               check=True, capture_output=True, text=True).stdout
    registers, stack = resource_usage(usage)
    code, loop = parse_sass(sass, loop_contains)
    body = [t for a, t in code if loop and loop[0] <= a <= loop[1]]
    ops = collections.Counter(_opcode(t) for t in body)
    everything = collections.Counter(_opcode(t).split(".")[0] for _, t in code)
    return SassStats(
        registers=registers, spill_bytes=stack,
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
        if r["kernel"] != "hptq" or r["m_tile_for"] != 1:
            continue
        for shape, (k, n) in SHAPES.items():
            if k != r["in_features"]:
                continue
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
