"""SSQR on real SmolLM2 layers: layer error at equal bits against GPTQ (issue 15's hypotheses).

For the float model's Hessians at a few depths (research.reduction_layers.capture_hessians:
Austen calib split, cached), every linear is quantized by each config and we record the layer
error ‖X(w−q)‖² (on the damped H, as quant_report.json) and its effective bits (every stored byte).
GPTQ at 3/4 bits × g32/64/192 gives each linear an error-vs-bits curve; a config's score on a linear
is error / GPTQ's error at the same bits (log error linear in bits between GPTQ's points, the
lower envelope; extrapolated from the last two beyond them, marked), summarized over linears by the
geometric mean. Hypotheses (issue 15): (a) global act-order vs row-parallel blocks of 8;
(b) scale inflation: scale_init rms, more outliers at smaller scales; (c) group size 32/64/192;
(d) outlier budget per row by contribution to the error (`allocation`, under a CSR cost model);
(v2) outliers as int8 codes at the group scale + 8-bit column delta: 16 bits per outlier
(`v2` configs: simulated, bits = stored bits − 16 per ELL slot).

    python -m research.ssqr_layers [--depths 0 14 29] [--configs NAME ...] [--threads 1]

Writes research/results/ssqr_layers.{json,md}; per-(config, linear) results are cached under
~/.cache/vllm-babai/ssqr-layers/ (keyed by the config, calibration and the SSQR source hash).
"""
from __future__ import annotations

import argparse
import math
import sys
import time

import torch

from babai_kernels.contract import ROW_PARALLEL, row_parallel_parts
from babai_quantizer import assets
from babai_quantizer.formats.registry import FORMAT_QUANTIZERS
from babai_quantizer.options import QuantizeOptions
from benchmarks.cache_keys import cached_json, code_version, stable_hash
from research.reduction_layers import capture_hessians
from research.ssqr_allocation import allocation_rows
from benchmarks.ssqr_v2sim import simulated_v2, v2_bits
from research.common import write_json, write_markdown

CACHE = assets.cache_dir() / "ssqr-layers"
SOURCES = ["quantizer/formats/ssqr.py", "quantizer/formats/registry.py", "quantizer/lattice/*.py"]


def ssqr_spec(b, g, rate, blocks=1, **kw) -> dict:
    """QuantizeOptions fields of an SSQR config: b-bit, group size g, outlier rate, row-parallel blocks."""
    return dict(format="ssqr", bits=b, group_size=g, outlier_rate=rate, row_parallel_blocks=blocks, **kw)


GPTQ = {f"gptq-w{b}g{g}": dict(format="gptq", bits=b, group_size=g, dtype="float64")
        for b in (3, 4) for g in (32, 64, 192)}
CONFIGS = {
    **GPTQ,
    "w3g64-1%-blocks8": ssqr_spec(3, 64, 0.01, 8),                 # the current quality rows
    "w3g64-1%": ssqr_spec(3, 64, 0.01),                            # (a) global order
    "w3g64-1%-cap": ssqr_spec(3, 64, 0.01, rate_mode="cap"),
    "w3g64-1%-cap-rms": ssqr_spec(3, 64, 0.01, rate_mode="cap", scale_init="rms"),   # (b)
    "w3g64-0.5%-cap": ssqr_spec(3, 64, 0.005, rate_mode="cap"),
    "w3g64-2%-cap": ssqr_spec(3, 64, 0.02, rate_mode="cap"),
    "w3g192-1%-cap": ssqr_spec(3, 192, 0.01, rate_mode="cap"),    # (c)
    "w3g192-2%-cap": ssqr_spec(3, 192, 0.02, rate_mode="cap"),
    "w3g32-1%-cap": ssqr_spec(3, 32, 0.01, rate_mode="cap"),
    "w4g64-1%-blocks8": ssqr_spec(4, 64, 0.01, 8),
    "w4g64-1%": ssqr_spec(4, 64, 0.01),
    "w4g64-1%-cap": ssqr_spec(4, 64, 0.01, rate_mode="cap"),
    "w4g64-0.5%-cap": ssqr_spec(4, 64, 0.005, rate_mode="cap"),
    "w4g192-0.5%-cap": ssqr_spec(4, 192, 0.005, rate_mode="cap"),
    "w4g192-1%-cap": ssqr_spec(4, 192, 0.01, rate_mode="cap"),
    "v2-w3g192-2%-cap": ssqr_spec(3, 192, 0.02, rate_mode="cap"),  # simulated int8 outlier codes
    "v2-w3g64-2%-cap": ssqr_spec(3, 64, 0.02, rate_mode="cap"),
    "v2-w4g192-1%-cap": ssqr_spec(4, 192, 0.01, rate_mode="cap"),
    "w3g192-0.5%-cap": ssqr_spec(3, 192, 0.005, rate_mode="cap"),
    "w3g192-1%-cap-rms": ssqr_spec(3, 192, 0.01, rate_mode="cap", scale_init="rms"),
    "w4g192-1%-cap-rms": ssqr_spec(4, 192, 0.01, rate_mode="cap", scale_init="rms"),
    "v2-w3g192-1%-cap": ssqr_spec(3, 192, 0.01, rate_mode="cap"),
    "v2-w3g192-3%-cap": ssqr_spec(3, 192, 0.03, rate_mode="cap"),
    "v2-w4g192-2%-cap": ssqr_spec(4, 192, 0.02, rate_mode="cap"),
}


def run_linear(name: str, spec: dict, W: torch.Tensor, H: torch.Tensor, kind: str) -> dict:
    """{error, bits, seconds, ...} of one config on one (N, K) linear W with Hessian H (K, K)."""
    options = QuantizeOptions(**spec)
    blocks = row_parallel_parts(W.shape[1], options.group_size, options.row_parallel_blocks) \
        if kind.rpartition(".")[2] in ROW_PARALLEL else 1
    v2 = name.startswith("v2-")
    with simulated_v2(v2):
        start = time.perf_counter()
        r = FORMAT_QUANTIZERS[options.format](W, H, None, options, blocks)
    n, k = W.shape
    bits = r.effective_bits
    out = {"error": float(r.error.sum()), "seconds": time.perf_counter() - start, "blocks": blocks}
    if options.format == "ssqr":
        slots = r.tensors["outlier_cols"].numel()
        if v2:
            bits = v2_bits(r.tensors, n, k, bits)
        out.update(outlier_rate=float(r.outlier_rate.mean()), ell_slots_per_row=slots / n,
                   clipped_rows=len(r.search["clipped_rows"]), multiplier_median=r.search.get("multiplier_median"))
    out["bits"] = bits
    return out


def gptq_reference(points: list[tuple[float, float]], bits: float) -> tuple[float, bool]:
    """(GPTQ error at `bits`, extrapolated?) from [(bits, error)]: log error linear in bits on the
    lower envelope, extrapolated from the two nearest points outside it."""
    env = []
    for b, e in sorted(points):
        if not env or e < env[-1][1]:
            env.append((b, e))
    if len(env) == 1:
        return env[0][1], True
    i = next((i for i in range(len(env) - 1) if bits <= env[i + 1][0]), len(env) - 2)
    (b0, e0), (b1, e1) = env[i], env[i + 1]
    t = (bits - b0) / (b1 - b0)
    return math.exp(math.log(e0) + t * (math.log(e1) - math.log(e0))), not 0 <= t <= 1


def summarize(results: dict) -> list[dict]:
    """Per config: weighted mean bits, geometric mean and range of error / GPTQ(bits) over linears."""
    rows = []
    for name in CONFIGS:
        per = results.get(name, {})
        if not per:
            continue
        ratios, weights, bits, extrap = [], [], [], 0
        for lin, r in per.items():
            pts = [(results[g][lin]["bits"], results[g][lin]["error"]) for g in GPTQ if lin in results.get(g, {})]
            ref, ex = gptq_reference(pts, r["bits"])
            ratios.append(r["error"] / ref)
            weights.append(r["weight_count"])
            bits.append(r["bits"])
            extrap += ex
        w = torch.tensor(weights, dtype=torch.float64)
        lr = torch.tensor(ratios, dtype=torch.float64).log()
        rows.append({"config": name, "linears": len(per), "bits": float((torch.tensor(bits) * w).sum() / w.sum()),
                     "ratio_geomean": float(lr.mean().exp()), "ratio_min": min(ratios), "ratio_max": max(ratios),
                     "extrapolated": extrap,
                     "outlier_rate": _mean(per, "outlier_rate"), "multiplier_median": _mean(per, "multiplier_median"),
                     "clipped_rows": sum(r.get("clipped_rows", 0) for r in per.values()),
                     "seconds": sum(r["seconds"] for r in per.values())})
    return rows


def _mean(per: dict, key: str):
    vals = [r[key] for r in per.values() if r.get(key) is not None]
    return sum(vals) / len(vals) if vals else None


def write(results: dict, alloc: list[dict], args, command: str) -> None:
    summary = summarize(results)
    write_json("ssqr_layers", {"command": command, "depths": args.depths, "summary": summary,
                               "allocation": alloc, "per_linear": results})
    f = lambda x, s=".3f": "–" if x is None else format(x, s)  # noqa: E731
    lines = ["# SSQR layer error at equal bits (issue 15)", "", f"Command: `{command}`  ",
             f"Linears: every linear at depths {args.depths} (float-model Hessians, Austen calib split 16 × 512). "
             "Ratio: layer error / GPTQ's at the same effective bits (log-linear between GPTQ's w3/w4 × "
             "g32/64/192 points of that linear; 'extrap.' counts linears beyond them); geometric mean and "
             "range over linears. v2 rows simulate int8 outlier codes (16 bits per outlier).", "",
             "| config | bits | error / GPTQ (geomean) | min | max | extrap. | outliers | median m | clipped rows | s |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in summary:
        lines.append(f"| {r['config']} | {r['bits']:.3f} | {r['ratio_geomean']:.3f} | {r['ratio_min']:.3f} | "
                     f"{r['ratio_max']:.3f} | {r['extrapolated']} | {f(r['outlier_rate'], '.2%')} | "
                     f"{f(r['multiplier_median'], '.2f')} | {r['clipped_rows']} | {r['seconds']:.0f} |")
    if alloc:
        lines += ["", "Outlier budget per row (d), CSR cost model (32 bits per outlier + 32 per row): the same "
                  "total outlier count spread uniformly (each row ≤ cap, least loss) or by a Lagrange multiplier "
                  "on the layer error (rows where outliers buy most error get more).", "",
                  "| setting | linears | uniform error / GPTQ | allocated error / GPTQ | allocated / uniform | "
                  "max row count / cap |", "|---|---|---|---|---|---|"]
        for a in alloc:
            lines.append(f"| {a['setting']} | {a['linears']} | {a['uniform_ratio']:.3f} | {a['allocated_ratio']:.3f} | "
                         f"{a['allocated_over_uniform']:.3f} | {a['max_row_over_cap']:.2f} |")
    write_markdown("ssqr_layers", lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--depths", type=int, nargs="+", default=[0, 14, 29])
    p.add_argument("--configs", nargs="*", choices=list(CONFIGS), default=list(CONFIGS))
    p.add_argument("--allocation", nargs="*", default=["3:64:0.01", "4:192:0.01"],
                   help="bits:group:rate settings for the per-row budget experiment (d)")
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    command = "python -m research.ssqr_layers " + " ".join(argv or sys.argv[1:])
    hessians = capture_hessians(args.depths, 16, 512, 0)
    version = code_version(SOURCES)
    CACHE.mkdir(parents=True, exist_ok=True)
    results: dict[str, dict] = {}
    for name in list(GPTQ) + [c for c in args.configs if c not in GPTQ]:
        for depth, groups in hessians.items():
            for H, weights in groups.values():
                for kind, W in weights.items():
                    lin = f"{depth}.{kind}"
                    path = CACHE / f"{stable_hash([CONFIGS[name], name.startswith('v2-'), lin, version])}.json"
                    r = cached_json(path, lambda: {**run_linear(name, CONFIGS[name], W, H, kind),
                                               "weight_count": W.numel()})
                    results.setdefault(name, {})[lin] = r
                    print(name, lin, {k: r[k] for k in ("bits", "error", "seconds")}, flush=True)
        write(results, [], args, command)
    alloc = allocation_rows(hessians, args.allocation, results, gptq_reference, GPTQ,
                            lambda key, compute: cached_json(CACHE / f"alloc-{stable_hash([key, version])}.json", compute))
    write(results, alloc, args, command)
    return 0


if __name__ == "__main__":
    sys.exit(main())
