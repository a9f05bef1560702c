"""Issue 23's levers, one table per bit target, from the regenerated quality results.

Reads benchmarks/results/quality.json (32 eval windows) and, where present, quality_w64.json (64 windows);
writes benchmarks/results/quality_issue23.{md,json}: for each HPTQ/HRTN row at ≈3.3 and ≈4.3 bits the
lever it measures, its perplexity beside the reference (hptq-<t>-ldl-fisher: α and the Fisher plan), the ratio of its
increase to GPTQ's at equal effective and GPU-resident bits (benchmarks.quality_report.ratios, c128
rows against the c128 GPTQ rows) and the quantizer's wall time.

    python -m benchmarks.quality_issue23
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

from benchmarks.quality_report import fmt, quantize_time

RESULTS = Path(__file__).resolve().parent / "results"
LEVERS = [      # (row suffix, what the row changes); Δ is against REFERENCE, the rows differ from it in one option
    ("hptq-{t}", "HPTQ before issue 23: one step per matrix, every linear at the target"),
    ("hrtn-{t}", "control: round to nearest, one step"),
    ("hptq-{t}-ldl", "per-column steps α ∝ D^-1/2 (WaterSIC)"),
    ("hrtn-{t}-ldl", "control: round to nearest with the same α"),
    ("hptq-{t}-fisher", "Fisher allocation alone"),
    ("hptq-{t}-ldl-fisher", "α + Fisher allocation (span ±1.5 bits): the reference"),
    ("hptq-{t}-ldl0.5-fisher", "reference with α ∝ D^-1/4"),
    ("hptq-{t}-ldl-fisher-span2.5", "reference with allocation span ±2.5 bits"),
    ("hptq-{t}-ldl-fisher-ft", "**CLI default**: reference + float (Qronos) target"),
    ("hptq-{t}-ldl-fisher-d0.1", "reference with damping 0.1"),
    ("hptq-{t}-ldl-fisher-d0.001", "reference with damping 0.001"),
    ("hptq-{t}-ldl-fisher-c128", "reference, calibration 128 × 512 (ratio vs GPTQ c128)"),
]
REFERENCE = "hptq-{t}-ldl-fisher"
NOTES = [
    "Notes (2026-12-05; docs/findings.md has the reading):",
    "- Rows named with no lever suffix beyond the reference and not listed here were not recomputed under "
    "today's code: quality.md lists the 2026-12-03 ones apart (hptq-3.3 29.910, hptq-4.3 26.075, hrtn-3.3 "
    "39.262, hrtn-4.3 28.658 at 32 windows).",
    "- Float target: -0.09 ppl at both sizes (same direction twice), ~+50 % layer time: the CLI default.",
    "- Span ±2.5: no change. Calibration 128 × 512: HPTQ and GPTQ both improve, the ratio stays 26 %, "
    "quantizing takes ~6× longer: the default stays 16 × 512.",
    "- Not run (CPU time): α ∝ D^-1/4 with the plan, damping 0.1 / 0.001, the 4.3-bit one-lever rows, "
    "calibration 256 × 2048.",
    "- At 3.3 bits 0.133 bits/weight are side information (chunk_bits 0.057, Huffman redundancy 0.050, α 0.023, "
    "tables 0.004): the next lever is fewer chunks per row (kernels' layout).",
]


def lever_table(results: dict, t: str) -> tuple[list[str], list[dict]]:
    """Markdown lines and JSON entries of the levers at target `t` ("3.3" / "4.3") present in `results`."""
    rows = {r["row"]: r for r in results["rows"]}
    base = rows["base"]["ppl"]
    default = rows.get(REFERENCE.format(t=t))
    lines = [f"| row | lever | effective bits | GPU bits | perplexity | Δ vs reference | ratio @eff | ratio @GPU "
             "| quantize s |", "|---|---|---|---|---|---|---|---|---|"]
    entries = []
    for pattern, lever in LEVERS:
        name = pattern.format(t=t)
        if name not in rows:
            continue
        r, rr = rows[name], results["ratios"].get(name, {})
        vs = None if default is None else r["ppl"] - default["ppl"]
        lines.append(f"| {name} | {lever} | {r['effective_bits']:.3f} | {fmt(r.get('gpu_resident_bits'))} | "
                     f"{r['ppl']:.3f} | {fmt(vs, '+.3f')} | {fmt(rr.get('effective'), '.1%')} | "
                     f"{fmt(rr.get('gpu'), '.1%')} | {quantize_time(r)} |")
        entries.append({"row": name, "lever": lever, "ppl": r["ppl"], "delta_base": r["ppl"] - base,
                        "vs_default": vs, "ratio": rr,
                        "quantize_seconds": r.get("quantize_wall_seconds", r.get("quantize_seconds"))})
    return lines, entries


def main(argv: list[str]) -> int:
    out, md = {}, ["# Issue 23: HPTQ levers at ≈3.3 and ≈4.3 stored bits", "",
                   "`python -m benchmarks.quality_issue23`, from [quality.md](quality.md) (and "
                   "[quality_w64.md](quality_w64.md)). Δ vs reference: perplexity minus "
                   "hptq-<t>-ldl-fisher's (α + Fisher plan) on the same windows; each lever row differs from it in "
                   "one option. Ratio: Δppl over base / GPTQ's Δppl interpolated at "
                   "equal bits (c128 rows against the c128 GPTQ rows). Quantize s: wall time of the quantizer, "
                   "1 thread, on the shared 2-core box (other jobs ran beside it: ±30 %)."]
    for stem in ("quality", "quality_w64"):
        path = RESULTS / f"{stem}.json"
        if not path.is_file():
            continue
        results = json.loads(path.read_text())
        windows = results["max_windows"]
        for t in ("3.3", "4.3"):
            lines, entries = lever_table(results, t)
            if entries:
                base = next(r["ppl"] for r in results["rows"] if r["row"] == "base")
                md += ["", f"## ≈{t} bits, {windows} eval windows (base {base:.3f})", "", *lines]
                out[f"{t}@{windows}"] = entries
    md += ["", *NOTES] if NOTES else []
    (RESULTS / "quality_issue23.md").write_text("\n".join(md) + "\n")
    (RESULTS / "quality_issue23.json").write_text(json.dumps(out, indent=1) + "\n")
    print("\n".join(md))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
