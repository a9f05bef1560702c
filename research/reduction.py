"""Benchmark: lattice basis reduction before Babai for HPTQ (issue 16), on real SmolLM2 layers.

Hessians H = Σ xxᵀ/n of every linear's input at a few depths, from the float SmolLM2-135M-Instruct
run on the Austen calib split (the CLI's default 16 × 512 tokens; cached under the asset cache).
For each linear and HPTQ bit target, plain HPTQ (act-order) against `quantize_hptq(reduce=…)` per
configuration method:window:

- layer error Σ_rows (w − q)ᵀH(w − q) (damped H, as the sweep optimizes) relative to plain HPTQ at
  equal coded bits (both searches to ±TOL; "adj." multiplies by 4^(bits_red − bits_plain), the
  error-per-bit slope of a scale change, to remove the leftover bit difference);
- the same two sweeps at plain HPTQ's scale: error ratio and the extra coded bits (the geometric gain
  and the entropy cost, separated);
- code entropy −Σ p log₂ p of z, the matrix scale ratio, tr(D) and Babai's γ before/after, the
  Gram–Schmidt profile (mean log₂ r over 8 slices of the Babai order), max |T|, reduction time.

And the time per layer of one 4096×4096 layer with a Hessian from random correlated activations
(benchmarks.lattice_sweep.synthetic_layer), windowed. Writes research/results/reduction.{json,md}.

This module is the CLI and the report (summaries, reduction.{json,md}); capturing the Hessians and
measuring each layer are in research/reduction_layers.py.

    python -m research.reduction [--depths 0 14 29] [--targets 3.3 4.3] [--configs lll:256 lll:full bkz-10:256]
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import shlex
import statistics
import sys
import time

import torch

from research.reduction_layers import TOL, big_layer, capture_hessians, layer_rows, reductions
from research.common import write_json, write_markdown

KINDS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


def versions() -> dict:
    import fpylll
    return {"python": platform.python_version(), "torch": torch.__version__, "fpylll": fpylll.__version__,
            "machine": platform.machine(), "cpu_count": os.cpu_count(), "threads": torch.get_num_threads()}


def by_kind(rows: list[dict]) -> list[dict]:
    """Per (config, linear kind): median adjusted error ratio over depths and targets."""
    out = []
    for config, kind in sorted({(r["config"], r["linear"].split(".")[-1]) for r in rows}):
        sel = [r["error_ratio_adj"] for r in rows if r["config"] == config and r["linear"].endswith(kind)]
        out.append({"config": config, "kind": kind, "rows": len(sel), "median": statistics.median(sel),
                    "min": min(sel), "max": max(sel)})
    return out


def summarize(rows: list[dict]) -> list[dict]:
    """Per (config, target): median / min / max of the adjusted error ratio and medians of the rest."""
    out = []
    for key in sorted({(r["config"], r["target"]) for r in rows}):
        sel = [r for r in rows if (r["config"], r["target"]) == key]
        adj = [r["error_ratio_adj"] for r in sel]
        out.append({"config": key[0], "target": key[1], "layers": len(sel),
                    "error_ratio_adj_median": statistics.median(adj), "min": min(adj), "max": max(adj),
                    "improved": sum(a < 1 for a in adj),
                    "equal_scale_error_ratio_median": statistics.median(r["equal_scale_error_ratio"] for r in sel),
                    "equal_scale_extra_bits_median": statistics.median(r["equal_scale_extra_bits"] for r in sel),
                    "scale_ratio_median": statistics.median(r["scale_ratio"] for r in sel)})
    return out


def write(meta: dict, groups: dict, rows: list[dict], big: dict | None) -> None:
    summary = summarize(rows)
    data = {**meta, "summary": summary, "by_kind": by_kind(rows), "hessians": groups, "layers": rows,
            "big_layer": big}
    write_json("reduction", data)
    lines = ["# Lattice basis reduction before Babai for HPTQ (issue 16)", "",
             f"Command: `{meta['command']}`  ", f"Date: {meta['date']}  ", f"Versions: {meta['versions']}  ",
             f"Device: {meta['device']}  ", f"Model/data: {meta['data']}  ",
             f"HPTQ: act-order, damping 0.01, float32 sweep, both searches to ±{TOL} bits/weight. Config = "
             "method:window (window = Babai-order columns reduced together; full = all K). Error = "
             "Σ_rows (w − q)ᵀH(w − q) on the damped H.", "",
             "## Summary: layer error of reduced / plain HPTQ at equal coded bits (adj.)", "",
             "| config | target bits | layers | median | min | max | layers improved | at equal scale: error ratio "
             "| at equal scale: extra bits/weight | scale ratio |", "|---|---|---|---|---|---|---|---|---|---|"]
    for s in summary:
        lines.append(f"| {s['config']} | {s['target']} | {s['layers']} | {s['error_ratio_adj_median']:.4f} | "
                     f"{s['min']:.4f} | {s['max']:.4f} | {s['improved']}/{s['layers']} | "
                     f"{s['equal_scale_error_ratio_median']:.4f} | {s['equal_scale_extra_bits_median']:+.4f} | "
                     f"{s['scale_ratio_median']:.4f} |")
    lines += ["", "By linear kind (all depths and targets): median (min – max) adjusted error ratio", "",
              "| config | " + " | ".join(KINDS) + " |", "|---|" + "---|" * len(KINDS)]
    kinds = by_kind(rows)
    for config in sorted({k["config"] for k in kinds}):
        cell = {k["kind"]: f"{k['median']:.4f} ({k['min']:.4f} – {k['max']:.4f})" for k in kinds
                if k["config"] == config}
        lines.append(f"| {config} | " + " | ".join(cell.get(k, "") for k in KINDS) + " |")
    lines += ["", "## Reductions (one per Hessian; q/k/v and gate/up share theirs)", "",
              "| depth | input of | K | config | tr(D) after/before | γ before | γ after | max abs T | seconds | "
              "log₂ r profile before | after |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    for gname, per in groups.items():
        depth, lin = gname.split(":")
        for config, st in per.items():
            lines.append(f"| {depth} | {lin} | {st['K']} | {config} | "
                         f"{st['trace_D_after'] / st['trace_D_before']:.4f} | {st['gamma_before']:.1f} | "
                         f"{st['gamma_after']:.1f} | {st['max_abs_T']} | {st['seconds']:.2f} | "
                         f"{' '.join(f'{v:.1f}' for v in st['profile_before'])} | "
                         f"{' '.join(f'{v:.1f}' for v in st['profile_after'])} |")
    lines += ["", "## Per layer", "",
              "| depth | linear | target | config | bits plain | bits red. | error ratio | adj. | equal-scale error "
              "ratio | equal-scale Δbits | H(z) plain | H(z) red. | equal-scale codes changed | max abs z plain / red. | "
              "error ≤ bound |", "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['depth']} | {r['linear']} | {r['target']} | {r['config']} | {r['bits_plain']:.4f} | "
                     f"{r['bits_reduced']:.4f} | {r['error_ratio']:.4f} | {r['error_ratio_adj']:.4f} | "
                     f"{r['equal_scale_error_ratio']:.4f} | {r['equal_scale_extra_bits']:+.4f} | "
                     f"{r['entropy_plain']:.3f} | {r['entropy_reduced']:.3f} | {r['equal_scale_changed_codes']:.3f} | "
                     f"{r['max_abs_z_plain']} / {r['max_abs_z_reduced']} | {r['error_le_bound']} |")
    if big:
        parts = big["parts_seconds"]
        lines += ["", f"## Time per layer, {big['shape'][0]}×{big['shape'][1]} ({big['hessian']}), "
                      f"{big['target_bits']} bits, tol {TOL}", "",
                  "| reduce | seconds (whole HPTQ search) | steps | bits | reduction s | tr(D) after/before | window "
                  "| error ratio adj. |", "|---|---|---|---|---|---|---|---|"]
        for k in ("none", "lll"):
            b, red = big[k], big[k].get("reduction")
            extra = (f"{red['seconds']:.1f} | {red['trace_D_after'] / red['trace_D_before']:.6f} | {red['window']} | "
                     f"{b['error_ratio_adj']:.4f}" if red else "– | – | – | 1")
            lines.append(f"| {k} | {b['seconds']:.1f} | {b['steps']} | {b['bits']:.4f} | {extra} |")
        lines += ["", "Parts, timed separately (seconds): " + ", ".join(f"{k} {v:.1f}" for k, v in parts.items())
                  + ". The reduced search pays reduce_basis and reduced_hessian_setup once, then "
                    "sweep_reduced per step."]
    write_markdown("reduction", lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--depths", type=int, nargs="+", default=[0, 14, 29])
    p.add_argument("--targets", type=float, nargs="+", default=[3.3, 4.3])
    p.add_argument("--configs", nargs="+", default=["lll:256", "lll:full", "bkz-10:256"])
    p.add_argument("--nsamples", type=int, default=16)
    p.add_argument("--seqlen", type=int, default=512)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--big", type=int, default=4096, help="K of the timed synthetic layer (0: skip)")
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    command = "python -m research.reduction " + " ".join(shlex.quote(a) for a in (argv or sys.argv[1:]))
    meta = {"command": command, "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "versions": versions(), "device": f"cpu ({platform.processor() or platform.machine()}, "
                                              f"{os.cpu_count()} cores shared, {args.threads} thread)",
            "data": f"SmolLM2-135M-Instruct float model, Austen calib split, {args.nsamples} × {args.seqlen} "
                    f"tokens (seed {args.seed}), depths {args.depths}", "tol": TOL}
    start = time.perf_counter()
    hessians = capture_hessians(args.depths, args.nsamples, args.seqlen, args.seed)
    groups, rows = {}, []
    for depth in args.depths:
        for first, (H, weights) in hessians[depth].items():
            reds, summary = reductions(H, next(iter(weights.values())), args.configs)
            groups[f"{depth}:{first}"] = {c: {**s, "K": H.shape[0]} for c, s in summary.items()}
            for name, W in weights.items():
                for row in layer_rows(W, H, reds, args.targets):
                    rows.append({"depth": depth, "linear": name, **row})
                    print(json.dumps(rows[-1]), flush=True)
                write(meta, groups, rows, None)
    big = big_layer(args.big, args.targets[0]) if args.big else None
    meta["seconds"] = time.perf_counter() - start
    write(meta, groups, rows, big)
    return 0


if __name__ == "__main__":
    sys.exit(main())
