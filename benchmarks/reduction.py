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
(benchmarks.lattice_sweep.synthetic_layer), windowed. Writes benchmarks/results/reduction.{json,md}.

    python -m benchmarks.reduction [--depths 0 14 29] [--targets 3.3 4.3] [--configs lll:256 lll:full bkz-10:256]
"""
from __future__ import annotations

import argparse
import datetime
import hashlib
import json
import os
import platform
import shlex
import statistics
import sys
import time
from pathlib import Path

import torch

from babai_kernels.hptq.pack import coded_bits
from babai_quantizer import assets
from babai_quantizer.calibration import SEQUENTIAL_GROUPS, calibration_windows, decoder_layers, load_causal_lm
from babai_quantizer.formats import quantize_hptq
from babai_quantizer.formats.hptq import HptqSweep
from babai_quantizer.formats.layer import prepare_layer
from babai_quantizer.hessian_capture import GramAccumulator, capture_inputs, catch_layer_inputs, run_layer
from babai_quantizer.lattice import achieved_error, babai_gamma, reduce_basis
from benchmarks.lattice_sweep import synthetic_layer

RESULTS = Path(__file__).parent / "results"
CACHE = assets.cache_dir() / "reduction-hessians"
TOL = 0.005          # bits/weight: both searches land this close to the target
SLICES = 8
KINDS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


def capture_hessians(depths: list[int], nsamples: int, seqlen: int, seed: int) -> dict:
    """{depth: {group's first linear: (H (K, K) float32, {linear: W (N, K) float32})}} from the float
    model on the Austen calib split (cached under the asset cache, keyed by the arguments)."""
    key = hashlib.sha256(json.dumps([depths, nsamples, seqlen, seed]).encode()).hexdigest()[:16]
    path = CACHE / f"{key}.pt"
    if path.is_file():
        return torch.load(path)
    model, tokenizer = load_causal_lm(assets.model_dir())
    model.float()
    text = assets.text_path("calib").read_text(encoding="utf-8")
    layers = decoder_layers(model)
    hidden, kwargs = catch_layer_inputs(model, layers, calibration_windows(tokenizer, text, nsamples, seqlen, seed),
                                        torch.device("cpu"))
    out = {}
    for index in range(max(depths) + 1):
        layer = layers[index]
        if index in depths:
            names = [g[0] for g in SEQUENTIAL_GROUPS]
            acc = {n: GramAccumulator() for n in names}
            for x in hidden:
                for n, a in capture_inputs(layer, names, x, kwargs).items():
                    acc[n].add(a)
            out[index] = {g[0]: (acc[g[0]].result(), {n: layer.get_submodule(n).weight.data.float().clone()
                                                       for n in g}) for g in SEQUENTIAL_GROUPS}
        hidden = [run_layer(layer, x, kwargs) for x in hidden]
    CACHE.mkdir(parents=True, exist_ok=True)
    torch.save(out, path)
    return out


def parse_config(text: str) -> tuple[str, int | None]:
    method, _, window = text.partition(":")
    return method, None if window in ("", "full") else int(window)


def entropy(z: torch.Tensor) -> float:
    """Empirical entropy of the code histogram, bits per weight."""
    p = torch.unique(z, return_counts=True)[1].double() / z.numel()
    return float(-(p * p.log2()).sum())


def profile(r: torch.Tensor) -> list[float]:
    """Mean log₂ of the Gram–Schmidt lengths over SLICES equal slices of the Babai order."""
    return [round(float(c.log2().mean()), 3) for c in r.chunk(SLICES)]


def codes_of(result) -> torch.Tensor:
    """z (N, K) int64 of an HPTQ result: q = float32(s·z) with |z| < 2^23, so round(q/s) is exact."""
    return torch.round(result.q_dequant.double() / result.search["scale"]).to(torch.int64)


def reductions(H: torch.Tensor, W: torch.Tensor, configs: list[str]) -> tuple[dict, dict]:
    """Per config: the group's reduction (shared by its linears) and its JSON summary."""
    _, prep = prepare_layer(W, H, ordering="act", damping=0.01, row_parallel_blocks=1, G_cross=None,
                            dtype=torch.float32, device=None)
    reds, summary = {}, {}
    for config in configs:
        method, window = parse_config(config)
        red = reduce_basis(prep.H, prep.perm, method, window=window)
        reds[config] = red
        summary[config] = {**red.stats(), "profile_before": profile(red.r_before),
                           "profile_after": profile(red.r_after)}
    return reds, summary


def layer_rows(W, H, reds: dict, targets: list[float]) -> list[dict]:
    """Plain vs each reduction at each target for one linear."""
    N, K = W.shape
    Wd, prep = prepare_layer(W, H, ordering="act", damping=0.01, row_parallel_blocks=1, G_cross=None,
                             dtype=torch.float32, device=None)
    chunk = None
    rows = []
    for target in targets:
        plain = quantize_hptq(W, H, target_bits=target, tol=TOL)
        chunk = plain.search["chunk_cols"]
        z_plain, s_plain, e_plain = codes_of(plain), plain.search["scale"], float(plain.error.sum())
        for config, red in reds.items():
            method, window = parse_config(config)
            r = quantize_hptq(W, H, target_bits=target, tol=TOL, reduce=method, reduce_window=window)
            z_eq, q_eq = HptqSweep.build(Wd, prep, red).codes_at(s_plain)
            z_red, ratio = codes_of(r), float(r.error.sum()) / e_plain
            rows.append({
                "target": target, "config": config,
                "bits_plain": plain.effective_bits, "bits_reduced": r.effective_bits,
                "error_ratio": ratio,
                "error_ratio_adj": ratio * 4.0 ** (r.effective_bits - plain.effective_bits),
                "scale_ratio": r.search["scale"] / s_plain,
                "entropy_plain": entropy(z_plain), "entropy_reduced": entropy(z_red),
                "equal_scale_error_ratio": float(achieved_error(Wd, q_eq, prep.H).sum()) / e_plain,
                "equal_scale_extra_bits": (coded_bits(z_eq, chunk) - coded_bits(z_plain, chunk)) / (N * K),
                "equal_scale_changed_codes": float((z_eq != z_plain).double().mean()),
                "max_abs_z_plain": int(z_plain.abs().max()), "max_abs_z_reduced": int(z_red.abs().max()),
                "reduction_seconds": r.search["reduction"]["seconds"],
                "seconds_plain": plain.search["seconds"], "seconds_reduced": r.search["seconds"],
                "error_le_bound": bool((r.error <= r.bound).all()),
            })
    return rows


def timed(fn):
    t = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t


def big_layer(K: int, target: float) -> dict:
    """Time per layer for a K×K layer (random correlated activations): the whole HPTQ search plain and
    with windowed LLL (default window), and its parts: layer setup, reduction, H' setup, one sweep."""
    W, H = synthetic_layer(K, K, "cpu")
    out = {"shape": [K, K], "hessian": "benchmarks.lattice_sweep.synthetic_layer", "target_bits": target}
    for reduce in ("none", "lll"):
        r = quantize_hptq(W, H, target_bits=target, tol=TOL, reduce=reduce)
        out[reduce] = {"seconds": r.search["seconds"], "steps": r.search["steps"], "bits": r.effective_bits,
                       "error": float(r.error.sum()), "scale": r.search["scale"],
                       **({"reduction": r.search["reduction"]} if reduce != "none" else {})}
    out["lll"]["error_ratio_adj"] = (out["lll"]["error"] / out["none"]["error"]
                                     * 4.0 ** (out["lll"]["bits"] - out["none"]["bits"]))
    (Wd, prep), t_setup = timed(lambda: prepare_layer(W, H, ordering="act", damping=0.01, row_parallel_blocks=1,
                                                      G_cross=None, dtype=torch.float32, device=None))
    red, t_reduce = timed(lambda: reduce_basis(prep.H, prep.perm, "lll"))
    reduced, t_build = timed(lambda: HptqSweep.build(Wd, prep, red))
    scale = out["none"]["scale"]
    _, t_sweep_plain = timed(lambda: HptqSweep.build(Wd, prep, None).codes_at(scale))
    _, t_sweep_reduced = timed(lambda: reduced.codes_at(scale))
    out["parts_seconds"] = {"layer_setup": t_setup, "reduce_basis": t_reduce, "reduced_hessian_setup": t_build,
                            "sweep_plain": t_sweep_plain, "sweep_reduced": t_sweep_reduced}
    return out


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
    RESULTS.mkdir(parents=True, exist_ok=True)
    data = {**meta, "summary": summary, "by_kind": by_kind(rows), "hessians": groups, "layers": rows,
            "big_layer": big}
    (RESULTS / "reduction.json").write_text(json.dumps(data, indent=1) + "\n")
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
    (RESULTS / "reduction.md").write_text("\n".join(lines) + "\n")


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
    command = "python -m benchmarks.reduction " + " ".join(shlex.quote(a) for a in (argv or sys.argv[1:]))
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
