"""SSQR on attention o_proj: head-local ordering vs global act-order (issue 15).

Hypothesis: SSQR is worst against GPTQ on o_proj (layer-error ratio 1.24× at 3 bits,
results/ssqr_layer_errors.md), and o_proj is the one linear type where GPTQ's scale groups in
ORIGINAL column order beat groups in act-order (results/gptq_group_order.md). o_proj's K = 576 input
columns are 9 heads × 64 dims, so SSQR's global act-order permutation mixes heads inside a scale
group. Keeping the permutation inside each head (block-local order, the row-parallel machinery of
kernels/contract.py and quantizer/formats/layer.py, with 9 blocks of 64 columns) and group size 64
(one group = one head) should help.

Configs (all SSQR, 1 % outliers, rate_mode "cap", scale_init "rms"; w3 and w4):
  act-g192        (a) global act-order, g192 (today's best, = ssqr_layers' w*g192-1%-cap-rms)
  act-g64         (b) global act-order, g64
  heads9-g64      (c) head-local order: 9 blocks of 64 columns (one head each), g64
  heads3-g192     (d) 9 blocks is not allowed at g192 (a block must be whole groups), so
                      row_parallel_parts lowers it to 3 blocks of 192 columns = 3 heads per block
  heads3-g64      extra: 3-head blocks at g64 (separates "blocks" from "one head per block")
  identity-g64    extra: original column order (no act-order at all), g64: groups are the heads
Scores as research/ssqr_layers.py: layer error / GPTQ's error at the same effective bits
(gptq_reference over GPTQ w3/w4 × g32/64/192 on that linear), geometric mean over o_proj linears.

    python -m research.ssqr_head_order [--depths 0 14 29 | --depths all] [--threads 1]

Hessians: research.reduction_layers.capture_hessians (float model, Austen calib split 16 × 512;
depths 0/14/29 alone reuse ssqr_layers' capture and per-linear cache). Writes
research/results/ssqr_head_order.{json,md}.
"""
from __future__ import annotations

import argparse
import datetime
import json
import platform
import sys
import time

import torch

from babai_kernels.contract import row_parallel_parts
from babai_quantizer.lattice.ordering import block_local_ordering
from benchmarks.cache_keys import cached_json, code_version, stable_hash
from research.reduction_layers import capture_hessians
from research.ssqr_layers import CACHE, GPTQ, SOURCES, gptq_reference, run_linear, ssqr_spec
from research.common import write_json, write_markdown

SAMPLE = [0, 14, 29]
KIND = "self_attn.o_proj"
HEADS, HEAD_DIM = 9, 64


def _configs(b: int) -> dict:
    kw = dict(rate_mode="cap", scale_init="rms")
    return {
        f"w{b} act-g192": ssqr_spec(b, 192, 0.01, **kw),
        f"w{b} act-g64": ssqr_spec(b, 64, 0.01, **kw),
        f"w{b} heads9-g64": ssqr_spec(b, 64, 0.01, HEADS, **kw),
        f"w{b} heads3-g192": ssqr_spec(b, 192, 0.01, HEADS, **kw),   # 9 requested, row_parallel_parts → 3
        f"w{b} heads3-g64": ssqr_spec(b, 64, 0.01, 3, **kw),
        f"w{b} identity-g64": ssqr_spec(b, 64, 0.01, ordering="identity", **kw),
    }


CONFIGS = {**_configs(3), **_configs(4)}


def check_blocks(H: torch.Tensor) -> dict:
    """What the block-local order does for K=576: parts chosen per (group, requested) and whether
    every column stays inside its 64-column head."""
    K = H.shape[0]
    out = {}
    for g, req in ((64, 9), (192, 9), (64, 3)):
        parts = row_parallel_parts(K, g, req)
        Hd = H.double() + 0.01 * H.double().diagonal().mean() * torch.eye(K, dtype=torch.float64)
        perm = block_local_ordering(Hd, "act", parts)
        width = K // parts
        out[f"g{g} requested {req}"] = {
            "parts": parts, "block_width": width,
            "perm_within_blocks": bool((perm // width == torch.arange(K) // width).all()),
            "perm_within_heads": bool((perm // HEAD_DIM == torch.arange(K) // HEAD_DIM).all()),
            "global_act_within_heads": bool((block_local_ordering(Hd, "act", 1) // HEAD_DIM
                                             == torch.arange(K) // HEAD_DIM).all())}
    return out


def summarize(results: dict, lins: list[str]) -> list[dict]:
    rows = []
    for name in CONFIGS:
        per = {l: results[name][l] for l in lins if l in results.get(name, {})}
        if not per:
            continue
        ratios, extrap = [], 0
        for lin, r in per.items():
            ref, ex = gptq_reference([(results[g][lin]["bits"], results[g][lin]["error"]) for g in GPTQ], r["bits"])
            ratios.append(r["error"] / ref)
            extrap += ex
        lr = torch.tensor(ratios, dtype=torch.float64).log()
        rows.append({"config": name, "linears": len(per), "blocks": sorted({r["blocks"] for r in per.values()}),
                     "bits": sum(r["bits"] for r in per.values()) / len(per),
                     "ratio_geomean": float(lr.mean().exp()), "ratio_min": min(ratios), "ratio_max": max(ratios),
                     "extrapolated": extrap, "seconds": sum(r["seconds"] for r in per.values())})
    return rows


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--depths", nargs="+", default=[str(d) for d in SAMPLE], help="depths, or 'all' (0..29)")
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    start = time.time()
    depths = list(range(30)) if args.depths == ["all"] else sorted(int(d) for d in args.depths)
    command = "python -m research.ssqr_head_order " + " ".join(argv or sys.argv[1:])
    version = code_version(SOURCES)
    CACHE.mkdir(parents=True, exist_ok=True)

    # the sample depths alone reuse ssqr_layers' capture (and its per-linear cache)
    hs = capture_hessians(SAMPLE if set(depths) <= set(SAMPLE) else depths, 16, 512, 0)
    layers = {d: (hs[d][KIND][0], hs[d][KIND][1][KIND]) for d in depths}     # depth: (H, W)
    sample = [d for d in depths if d in SAMPLE]
    rest = [d for d in depths if d not in SAMPLE]
    block_check = check_blocks(layers[depths[0]][0])
    print("block check", json.dumps(block_check), flush=True)

    results: dict[str, dict] = {}
    for name in list(GPTQ) + list(CONFIGS):
        spec = GPTQ.get(name) or CONFIGS[name]
        for d in depths:
            H, W = layers[d]
            lin = f"{d}.{KIND}"
            r = cached_json(CACHE / f"{stable_hash([spec, False, lin, version])}.json",
                        lambda: {**run_linear(name, spec, W, H, KIND), "weight_count": W.numel()})
            results.setdefault(name, {})[lin] = r
        print(name, {k: round(v, 3) for k, v in zip(("bits", "s"), (r["bits"], r["seconds"]))}, flush=True)

    lins = [f"{d}.{KIND}" for d in depths]
    summary = {"all": summarize(results, lins)}
    if sample and rest:
        summary["sample 0/14/29"] = summarize(results, [f"{d}.{KIND}" for d in sample])
    gptq_blocks = {g: sorted({r["blocks"] for r in results[g].values()}) for g in GPTQ}
    runtime = time.time() - start
    versions = {"python": platform.python_version(), "torch": torch.__version__, "code": version,
                "threads": args.threads}
    date = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    write_json("ssqr_head_order", {"command": command, "date": date, "versions": versions, "runtime_s": runtime,
                                   "depths": depths, "block_check": block_check, "gptq_blocks": gptq_blocks,
                                   "configs": CONFIGS, "summary": summary, "per_linear": results})

    lines = ["# SSQR on o_proj: head-local order vs global act-order (issue 15)", "",
             f"Command: `{command}`  ", f"Date: {date}  ", f"Versions: {versions}  ", f"Runtime: {runtime:.0f} s", "",
             f"Linears: self_attn.o_proj at depths {depths} (K = 576 = 9 heads × 64). SSQR 1 % outliers, "
             "rate_mode cap, scale_init rms. Ratio: layer error / GPTQ's at the same effective bits "
             "(research.ssqr_layers.gptq_reference over GPTQ w3/w4 × g32/64/192, act-order, default "
             f"row_parallel_blocks=8 → blocks used {gptq_blocks}); geometric mean and range over linears.", "",
             "Block check (K = 576; `row_parallel_parts` picks the largest P ≤ requested with K/P a multiple of "
             "the group and of 32):", ""]
    for k, v in block_check.items():
        lines.append(f"- {k}: {v['parts']} blocks of {v['block_width']} columns; permutation within blocks "
                     f"{v['perm_within_blocks']}, within heads {v['perm_within_heads']}")
    lines.append(f"- global act-order keeps every column in its head: "
                 f"{next(iter(block_check.values()))['global_act_within_heads']}")
    for label, rows in summary.items():
        lines += ["", f"### {label} ({rows[0]['linears']} linears)", "",
                  "| config | blocks | bits | error / GPTQ (geomean) | min | max | extrap. | s |",
                  "|---|---|---|---|---|---|---|---|"]
        for r in rows:
            lines.append(f"| {r['config']} | {r['blocks']} | {r['bits']:.3f} | {r['ratio_geomean']:.3f} | "
                         f"{r['ratio_min']:.3f} | {r['ratio_max']:.3f} | {r['extrapolated']} | {r['seconds']:.0f} |")
    write_markdown("ssqr_head_order", lines, echo=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
