"""Quality benchmark: perplexity against bits on SmolLM2-135M-Instruct + Austen (issue 15).

Rows (ROWS): base (bf16 weights); RTN and GPTQ (act-order, fp64 sweep) at 3 and 4 bits with group
sizes 32, 64 and 192 (GPTQ's ppl-vs-bits curve); Babai back-to-front at g64 (same integers as
GPTQ); HPTQ at four sizes between 3.1 and 4.4 bits, HRTN at two; SSQR: the earlier g64 rows
(block-local order, rate closest to the target), the best settings of research/ssqr_layers.py
(global order, g192, rate_mode 'cap', scale_init 'rms'), and two `ssqr-v2sim-*` rows that simulate
a proposed format v2 (int8 outlier codes, benchmarks/ssqr_v2sim.py; not a checkpoint). Calibration on the
Austen calib split (CLI default 16 × 512 tokens), perplexity on the eval split (Pride and
Prejudice), default the first 32 windows of 1024 tokens, float32 with the exact dequantized weights.

Each row reports effective bits (every stored byte, as `quant_report.json`) and resident bits
under the serving runtime (benchmarks/quality_bits.py), and each SSQR/HPTQ/HRTN row the ratio of
its perplexity increase over base to GPTQ's, interpolated at the same bits (quality_report.py).

Cached and resumable, under ~/.cache/vllm-babai/quality-rows/:
  <row>-<qkey>.weights.pt  the dequantized weights {linear: (N, K) float32} + quantization facts,
                           keyed by the non-default QuantizeOptions, calibration and a hash of the
                           source files that decide the weights (`code_version`);
  <row>-<key>.json         the row's result: qkey + eval windows + evaluation code.
So a re-run after an unrelated change, or with more windows, re-uses the quantized weights.

    python -m benchmarks.quality [--rows NAME ...] [--max-windows 32] [--threads 1] [--out STEM]
                                 [--earlier-from COMMIT] [--report-only]
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shlex
import sys
import time
from pathlib import Path

import torch

from babai_quantizer import assets
from babai_quantizer.calibration import calibration_windows, load_causal_lm
from babai_quantizer.allocation import quantize_allocated
from babai_quantizer.evaluate import evaluate_text
from babai_quantizer.options import QuantizeOptions
from benchmarks.cache_keys import code_version, stable_hash
from benchmarks.quality_bits import RESIDENT_VERSION, model_resident_bits
from benchmarks.quality_report import earlier_rows, write_results
from benchmarks.ssqr_v2sim import simulated_v2, v2_bits

ROOT = Path(__file__).resolve().parent.parent
CACHE = assets.cache_dir() / "quality-rows"


def gptq_bits(bits: int, g: int) -> float:
    """Effective bits of the GPTQ layout: b-bit codes + fp16 scale and b-bit zero per group of g."""
    return bits + (16 + bits) / g


def _rows() -> dict[str, dict | None]:
    rows: dict[str, dict | None] = {"base": None}
    for g in (32, 64, 192):
        for b in (3, 4):
            rows[f"gptq-w{b}g{g}"] = dict(format="gptq", bits=b, group_size=g, dtype="float64")
            rows[f"rtn-w{b}g{g}"] = dict(format="rtn", bits=b, group_size=g)
    for b in (3, 4):
        rows[f"babai-w{b}g64"] = dict(format="gptq", bits=b, group_size=64, dtype="float64", algorithm="babai")
    for t in (3.15, 3.3, 3.8, 4.3):      # 3.3 / 4.3: GPTQ w3g64 / w4g64's exact size
        exact = {3.3: gptq_bits(3, 64), 4.3: gptq_bits(4, 64)}.get(t, t)
        rows[f"hptq-{t}"] = dict(format="hptq", target_bits=exact)
        # Issue 23's reference: per-column steps α ∝ D^{-1/2} (WaterSIC) and one Lagrange multiplier for the
        # model (quantizer/allocation.py, Fisher-weighted); the CLI's default adds the float target (-ft).
        ref = dict(format="hptq", target_bits=exact, col_steps="ldl", allocation="fisher")
        rows[f"hptq-{t}-ldl-fisher"] = ref
        rows[f"hptq-{t}-ldl-fisher-ft"] = {**ref, "float_target": True}
        if t in (3.3, 4.3):
            rows[f"hrtn-{t}"] = dict(format="hrtn", target_bits=exact)
            # Each lever alone, HRTN with the same α as the control ...
            rows[f"hptq-{t}-ldl"] = dict(format="hptq", target_bits=exact, col_steps="ldl")
            rows[f"hrtn-{t}-ldl"] = dict(format="hrtn", target_bits=exact, col_steps="ldl")
            rows[f"hptq-{t}-fisher"] = dict(format="hptq", target_bits=exact, allocation="fisher")
            # ... and one change to the reference each: α ∝ D^{-1/4}, the allocation's span (±2.5 bits instead of
            # ±1.5), damping, calibration size (128 windows of 512 tokens, beside GPTQ's).
            rows[f"hptq-{t}-ldl0.5-fisher"] = {**ref, "col_steps": "ldl0.5"}
            rows[f"hptq-{t}-ldl-fisher-span2.5"] = {**ref, "allocation_span": 2.5}
            rows[f"hptq-{t}-ldl-fisher-d0.1"] = {**ref, "damping": 0.1}
            rows[f"hptq-{t}-ldl-fisher-d0.001"] = {**ref, "damping": 0.001}
            rows[f"hptq-{t}-ldl-fisher-c128"] = {**ref, "nsamples": 128}
    for b in (3, 4):
        rows[f"gptq-w{b}g64-c128"] = dict(format="gptq", bits=b, group_size=64, dtype="float64", nsamples=128)
    for b, g, rate in ((3, 64, 0.01), (3, 64, 0.03), (4, 64, 0.01), (4, 64, 0.03)):
        rows[f"ssqr-w{b}g{g}-{rate:.0%}"] = dict(format="ssqr", bits=b, group_size=g, outlier_rate=rate)
    # The best settings of research/ssqr_layers.py: global act-order, g192, capped 1 % rate, rms scale shape.
    for b in (3, 4):
        rows[f"ssqr-w{b}g192-1%-cap-rms"] = dict(format="ssqr", bits=b, group_size=192, outlier_rate=0.01,
                                                 row_parallel_blocks=1, rate_mode="cap", scale_init="rms")
    # Not a checkpoint: SSQR with outliers as int8 codes (a proposed v2, benchmarks/ssqr_v2sim.py).
    for b, rate in ((3, 0.02), (4, 0.01)):
        rows[f"ssqr-v2sim-w{b}g192-{rate:.0%}-cap"] = dict(format="ssqr", bits=b, group_size=192, outlier_rate=rate,
                                                           row_parallel_blocks=1, rate_mode="cap", simulate="v2")
    return rows


BENCH_KEYS = ("simulate", "nsamples")     # row keys of the benchmark itself: v2 simulation, calibration windows
ROWS = _rows()
# The order of a full run: what the comparison needs first (issue 15's priorities).
DEFAULT_ORDER = ["base", "gptq-w3g64", "gptq-w4g64", "hptq-3.3-ldl-fisher-ft", "hptq-4.3-ldl-fisher-ft",
                 "hptq-3.3-ldl-fisher", "hptq-4.3-ldl-fisher",
                 "hptq-3.3", "hptq-4.3", "hptq-3.3-ldl", "hptq-4.3-ldl",
                 "ssqr-w3g192-1%-cap-rms", "ssqr-w4g192-1%-cap-rms", "gptq-w3g32", "gptq-w4g32",
                 "gptq-w3g192", "gptq-w4g192", "ssqr-v2sim-w3g192-2%-cap", "rtn-w3g64", "rtn-w4g64",
                 "hptq-3.15", "hptq-3.8", "ssqr-v2sim-w4g192-1%-cap"]
DEFAULT_ORDER += [r for r in ROWS if r not in DEFAULT_ORDER]

COMMON_SOURCES = ["quantizer/driver.py", "quantizer/calibration.py", "quantizer/hessian_capture.py",
                  "quantizer/formats/layer.py", "quantizer/formats/result.py", "quantizer/lattice/*.py"]
FORMAT_SOURCES = {"ssqr": ["quantizer/formats/ssqr.py", "quantizer/formats/bisection.py", "kernels/ssqr/pack.py"],
                  "hptq": ["quantizer/formats/hptq.py", "quantizer/formats/bisection.py", "kernels/hptq/pack.py",
                           "kernels/hptq/huffman.py", "quantizer/allocation.py"],
                  "gptq": ["quantizer/formats/registry.py", "quantizer/babai_layer.py", "kernels/gptq.py"]}
FORMAT_SOURCES["hrtn"] = FORMAT_SOURCES["hptq"]
FORMAT_SOURCES["rtn"] = FORMAT_SOURCES["gptq"]
EVAL_SOURCES = ["quantizer/evaluate.py"]


def quant_key(spec: dict, args) -> str:
    """Key of a row's quantized weights: the options that differ from QuantizeOptions' defaults
    (so adding an option does not invalidate the cache), calibration, code."""
    default = dataclasses.asdict(QuantizeOptions())
    options = {k: v for k, v in dataclasses.asdict(QuantizeOptions(**_options(spec))).items() if v != default[k]}
    if "simulate" in spec:
        options["simulate"] = spec["simulate"]
    return stable_hash([options, spec.get("nsamples", args.nsamples), args.seqlen, args.seed,
                  code_version(COMMON_SOURCES + FORMAT_SOURCES[spec["format"]])])


def row_key(name: str, args) -> str:
    spec = ROWS[name]
    quant = "base" if spec is None else quant_key(spec, args)
    return stable_hash([quant, args.max_windows, code_version(EVAL_SOURCES)])


def quantized_weights(name: str, model, tokenizer, args, texts) -> dict:
    """{"weights": {linear: (N, K) float32}, "facts": {...}} of a row (cached; see module docstring)."""
    spec = ROWS[name]
    path = CACHE / f"{name}-{quant_key(spec, args)}.weights.pt"
    if path.is_file():
        saved = torch.load(path)
    else:
        windows = calibration_windows(tokenizer, texts["calib"], spec.get("nsamples", args.nsamples), args.seqlen,
                                      args.seed)
        options = QuantizeOptions(**_options(spec))
        start = time.perf_counter()
        with simulated_v2(spec.get("simulate") == "v2"):
            result, allocation = quantize_allocated(model, windows, options, progress=True)
        report = result.report()
        facts = dict(effective_bits=_effective_bits(spec, result), quantize_seconds=report["totals"]["seconds"],
                     quantize_wall_seconds=time.perf_counter() - start,      # + the allocation plan
                     bound_holds_where_unclipped=report["totals"]["bound_holds_where_unclipped"],
                     clipped_rows=report["totals"]["clipped_rows"], options=dataclasses.asdict(options),
                     outlier_rate=_mean_outlier_rate(report["layers"]), allocation=allocation,
                     layer_bits={n: r["effective_bits"] for n, r in report["layers"].items()})
        saved = {"weights": {n: q.weight for n, q in result.linears.items()},
                 "tensors": {n: q.tensors for n, q in result.linears.items()}, "facts": facts}
        CACHE.mkdir(parents=True, exist_ok=True)
        torch.save(saved, path)       # before the resident count: a failure there loses no quantization
    if saved["facts"].get("resident_version") != RESIDENT_VERSION:
        bits = spec.get("bits", 4) if spec["format"] in ("gptq", "rtn") else None
        counted = {key: model_resident_bits(spec["format"], saved["weights"], saved["tensors"], bits, gpu=gpu)
                   for key, gpu in (("resident_bits", False), ("gpu_resident_bits", True))}
        saved["facts"].update(**counted, resident_version=RESIDENT_VERSION)
        torch.save(saved, path)
    return saved


def _options(spec: dict) -> dict:
    """QuantizeOptions fields of a row spec (without the benchmark's own "simulate" and "nsamples")."""
    return {k: v for k, v in spec.items() if k not in BENCH_KEYS}


def _effective_bits(spec: dict, result) -> float:
    """Stored bits/weight of the model's quantized linears; a "v2" simulation counts v2's storage."""
    if spec.get("simulate") != "v2":
        return result.report()["totals"]["effective_bits"]
    total = sum(v2_bits(q.tensors, *q.weight.shape, q.report["effective_bits"]) * q.weight.numel()
                for q in result.linears.values())
    return total / sum(q.weight.numel() for q in result.linears.values())


def _mean_outlier_rate(layers: dict) -> float | None:
    rated = [(r["outlier_rate"], r["rows"] * r["cols"]) for r in layers.values() if r["outlier_rate"] is not None]
    return sum(r * w for r, w in rated) / sum(w for _, w in rated) if rated else None


def cached_row(name: str, args) -> dict | None:
    """The row's cached result, its resident bits recounted (from the cached weights) when the
    resident formula or the runtime changed since."""
    path = CACHE / f"{name}-{row_key(name, args)}.json"
    if not path.is_file():
        return None
    row = json.loads(path.read_text())
    weights = ROWS[name] is not None and (CACHE / f"{name}-{quant_key(ROWS[name], args)}.weights.pt").is_file()
    if weights and row.get("resident_version") != RESIDENT_VERSION:
        facts = quantized_weights(name, None, None, args, None)["facts"]
        row.update(resident_bits=facts["resident_bits"], gpu_resident_bits=facts["gpu_resident_bits"],
                   resident_version=RESIDENT_VERSION)
        path.write_text(json.dumps(row, indent=1))
    return row


def run_row(name: str, args, model_dir: Path, texts: dict) -> dict:
    """One row's result (cached as <row>-<key>.json)."""
    row = cached_row(name, args)
    if row is not None:
        return row
    start = time.perf_counter()
    model, tokenizer = load_causal_lm(model_dir)
    model.float()   # evaluate in float32: exact for bf16 weights and for the dequantized ones
    spec = ROWS[name]
    row = {"row": name, "spec": spec, "load_at_start": os.getloadavg()}
    if spec is None:
        row.update(effective_bits=16.0, resident_bits=16.0, gpu_resident_bits=16.0)
    else:
        saved = quantized_weights(name, model, tokenizer, args, texts)
        for lname, weight in saved["weights"].items():
            model.get_submodule(lname).weight.data = weight
        row.update(saved["facts"])
    ppl = evaluate_text(model, tokenizer, texts["eval"], window=1024, max_windows=args.max_windows, progress=True)
    row.update(ppl=ppl.ppl, scored_tokens=ppl.scored_tokens, eval_windows=ppl.windows,
               seconds=time.perf_counter() - start, load_at_end=os.getloadavg(),
               key=row_key(name, args), date=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))
    CACHE.mkdir(parents=True, exist_ok=True)
    (CACHE / f"{name}-{row['key']}.json").write_text(json.dumps(row, indent=1))
    return row


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rows", nargs="*", choices=list(ROWS), default=DEFAULT_ORDER,
                   help="rows to run, in this order (default: all, most needed first)")
    p.add_argument("--nsamples", type=int, default=16, help="calibration windows (CLI default)")
    p.add_argument("--seqlen", type=int, default=512, help="tokens per calibration window (CLI default)")
    p.add_argument("--max-windows", type=int, default=32, help="eval windows of 1024 tokens (0: all 164)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=os.cpu_count() or 1,
                   help="torch CPU threads; use 1 on a busy shared machine (OpenMP spins when oversubscribed)")
    p.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "quality",
                   help="results stem: <out>.json, .md, .png (a scratch stem for a second concurrent run)")
    p.add_argument("--earlier-from", metavar="COMMIT",
                   help="list the rows of benchmarks/results/quality.json as committed at COMMIT that this run "
                        "lacks, apart and with their date (rows not recomputed under today's code)")
    p.add_argument("--report-only", action="store_true",
                   help="run nothing: write the table, plot and JSON from the cached rows (missing rows marked)")
    args = p.parse_args(argv)
    args.max_windows = args.max_windows or None
    torch.set_num_threads(args.threads)
    command = "python -m benchmarks.quality " + " ".join(shlex.quote(a) for a in (argv or sys.argv[1:]))
    texts = {s: assets.text_path(s).read_text(encoding="utf-8") for s in ("calib", "eval")}
    model_dir = None if args.report_only else assets.model_dir()
    earlier = earlier_rows(args.earlier_from) if args.earlier_from else None
    rows: dict[str, dict] = {}
    for name in args.rows:
        row = cached_row(name, args) if args.report_only else run_row(name, args, model_dir, texts)
        if row is not None:
            rows[name] = row
            print(json.dumps({k: row[k] for k in ("row", "effective_bits", "resident_bits", "ppl")}), flush=True)
        write_results(rows, [n for n in args.rows if n not in rows], args, command, args.out, earlier)
    return 0


if __name__ == "__main__":
    sys.exit(main())
