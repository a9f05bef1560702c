"""GPTQ's scale groups in original column order vs in quantization (act-)order (issue 15).

SmolLM2-135M-Instruct comes from a Q4_1 GGUF: its float weights lie on an asymmetric 4-bit grid
with groups of 32 consecutive ORIGINAL input columns. The gptq format groups its scales in the
original column order (standard GPTQ checkpoints: `groups_in="original"`), so its g32/g64/g192
groups contain whole Q4_1 groups; SSQR groups in quantization order. Hypothesis tested: "GPTQ
profits from its groups being aligned with the model's Q4_1 grid, SSQR's are not".

On the linears of research.ssqr_layers (every linear at depths 0, 14, 29; float-model Hessians
from the Austen calib split, same cache), each linear is quantized by GPTQ w3/w4 × g32/64/192 twice
with `babai_quantizer.lattice.quantize_layer`: (a) groups_in="original" (exactly the gptq format's
call), (b) groups_in="quant_order" (steps [gG, (g+1)G) of the act-order permutation, as SSQR).
Same clipped symmetric grid, MSE fp16 scales, damping, act-order and float64 sweep; only the
grouping order differs (same number of scales, so the same bits). err = tr((W−Q)H(W−Q)ᵀ) on the
damped H, as ssqr_layers.py. Per (bits, group size): geometric mean, min and max over linears of
err_b / err_a and the number of linears where (b) is better.

    python -m research.gptq_group_order [--depths 0 14 29] [--threads 1]

Writes research/results/gptq_group_order.{json,md}. (a) is checked against ssqr_layers' cached
gptq results where present (`check_vs_ssqr_layers`: max relative difference).
"""
from __future__ import annotations

import argparse
import datetime
import json
import math
import platform
import sys
import time

import torch

from babai_quantizer import lattice
from babai_quantizer.options import QuantizeOptions
from benchmarks.cache_keys import code_version, stable_hash
from research.reduction_layers import capture_hessians
from research.ssqr_layers import CACHE as SSQR_CACHE, GPTQ, SOURCES as SSQR_SOURCES
from research.common import write_json, write_markdown

MODES = ("original", "quant_order")


def quantize(W: torch.Tensor, H: torch.Tensor, bits: int, group_size: int, groups_in: str) -> float:
    """Layer error of GPTQ (the gptq format's lattice call) with groups formed in `groups_in` order."""
    o = QuantizeOptions(format="gptq", bits=bits, group_size=group_size, dtype="float64")
    r = lattice.quantize_layer(W, H, bits=o.bits, group_size=o.group_size, grid="clip", ordering=o.ordering,
                               groups_in=groups_in, damping=o.damping, dtype=getattr(torch, o.dtype),
                               device=W.device)
    return float(r.error.sum())


def ssqr_layers_error(bits: int, group_size: int, lin: str, version: str) -> float | None:
    """GPTQ's error on `lin` from ssqr_layers' cache (None if absent)."""
    name = f"gptq-w{bits}g{group_size}"
    path = SSQR_CACHE / f"{stable_hash([GPTQ[name], False, lin, version])}.json"
    return json.loads(path.read_text())["error"] if path.is_file() else None


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--depths", type=int, nargs="+", default=[0, 14, 29])
    p.add_argument("--bits", type=int, nargs="+", default=[3, 4])
    p.add_argument("--groups", type=int, nargs="+", default=[32, 64, 192])
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    command = "python -m research.gptq_group_order " + " ".join(sys.argv[1:] if argv is None else argv)
    t0 = time.perf_counter()
    hessians = capture_hessians(args.depths, 16, 512, 0)
    version = code_version(SSQR_SOURCES)
    per_linear: dict[str, dict] = {}
    summary = []
    check = 0.0
    for b in args.bits:
        for g in args.groups:
            key = f"w{b}g{g}"
            rows = {}
            for depth, groups in hessians.items():
                for H, weights in groups.values():
                    for kind, W in weights.items():
                        lin = f"{depth}.{kind}"
                        start = time.perf_counter()
                        ea, eb = (quantize(W, H, b, g, m) for m in MODES)
                        ref = ssqr_layers_error(b, g, lin, version)
                        if ref is not None:
                            check = max(check, abs(ea - ref) / ref)
                        rows[lin] = {"err_original": ea, "err_quant_order": eb, "ratio": eb / ea,
                                     "ssqr_layers_err": ref, "seconds": time.perf_counter() - start}
                        print(key, lin, f"a={ea:.4g} b={eb:.4g} b/a={eb / ea:.4f}", flush=True)
            per_linear[key] = rows
            ratios = [r["ratio"] for r in rows.values()]
            summary.append({"bits": b, "group_size": g, "linears": len(ratios),
                            "ratio_geomean": math.exp(sum(map(math.log, ratios)) / len(ratios)),
                            "ratio_min": min(ratios), "ratio_max": max(ratios),
                            "quant_order_better": sum(x < 1 for x in ratios)})
    runtime = time.perf_counter() - t0
    meta = {"date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "command": command, "python": platform.python_version(), "torch": torch.__version__,
            "threads": args.threads, "code_version": version, "depths": args.depths,
            "runtime_s": runtime, "check_vs_ssqr_layers": check}
    write_json("gptq_group_order", {**meta, "summary": summary, "per_linear": per_linear})
    lines = ["# GPTQ scale groups: original column order vs quantization order (issue 15)", "",
             f"Date: {meta['date']}  ", f"Command: `{command}`  ",
             f"Versions: Python {meta['python']}, torch {meta['torch']}, lattice/ssqr code {version}; "
             f"{args.threads} thread(s), runtime {runtime:.0f} s  ",
             f"Check: (a) vs ssqr_layers' cached gptq errors, max relative difference {check:.2e}", "",
             f"Linears: every linear at depths {args.depths} (float-model Hessians, Austen calib split 16 × 512). "
             "GPTQ (clipped symmetric grid, MSE fp16 scales, act-order, damping 0.01, float64) with scale groups "
             "(a) of consecutive ORIGINAL columns (the gptq format; aligned with the model's Q4_1 groups of 32) "
             "or (b) of consecutive steps of the act-order permutation (as SSQR). err = tr((W−Q)H(W−Q)ᵀ); "
             "ratio err_b / err_a over linears (> 1: original order better).", "",
             "| bits | group | linears | err_b / err_a (geomean) | min | max | (b) better |",
             "|---|---|---|---|---|---|---|"]
    for s in summary:
        lines.append(f"| {s['bits']} | {s['group_size']} | {s['linears']} | {s['ratio_geomean']:.4f} | "
                     f"{s['ratio_min']:.4f} | {s['ratio_max']:.4f} | {s['quant_order_better']} |")
    write_markdown("gptq_group_order", lines, echo=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
