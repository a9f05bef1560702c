"""Tables, ratios and plot of benchmarks.quality: benchmarks/results/quality.{json,md,png}.

The acceptance metric of issue 15: for a row at b bits with perplexity increase Δ = ppl − base,
ratio = Δ / Δ_GPTQ(b), Δ_GPTQ(b) linear in bits between GPTQ's points (all group sizes, the lower
envelope: a GPTQ point that a smaller GPTQ point beats is dropped). Computed at effective bits
(stored bytes), at resident bits of the CPU serving runtime and at the bits the GPU kernels keep
(quality_bits.py); None outside GPTQ's range.
"""
from __future__ import annotations

import datetime
import json
import os
import platform
from pathlib import Path

import torch

RESULTS = Path(__file__).parent / "results"
COMPARED = ("ssqr", "hptq", "hrtn")


def calibration(row: dict) -> str:
    """'' for the run's calibration, ' c<n>' for a row calibrated on its own n windows."""
    n = (row["spec"] or {}).get("nsamples")
    return "" if n is None else f" c{n}"


def family(row: dict) -> str:
    """Plot line of a row: its format (babai: 'babai'); SSQR split by group size and ordering;
    rows with their own calibration size apart (' c<n>')."""
    return _family(row) + calibration(row)


def _family(row: dict) -> str:
    spec = row["spec"] or {}
    fmt = spec.get("format", "base")
    if spec.get("algorithm") == "babai":
        return "babai"
    if fmt == "ssqr":
        if spec.get("simulate"):
            return f"ssqr {spec['simulate']} (simulated)"
        blocks = spec.get("row_parallel_blocks", 8)
        return f"ssqr g{spec.get('group_size', 64)}" + (" global" if blocks == 1 else f" blocks{blocks}")
    return fmt


def gptq_envelope(rows: dict, bits_key: str, calib: str = "") -> list[tuple[float, float]]:
    """[(bits, Δppl)] of the GPTQ rows of calibration `calib` (calibration()) sorted by bits, each
    better than every smaller one."""
    base = rows["base"]["ppl"]
    pts = sorted((r[bits_key], r["ppl"] - base) for r in rows.values()
                 if family(r) == "gptq" + calib and r.get(bits_key) is not None)
    env: list[tuple[float, float]] = []
    for b, d in pts:
        if not env or d < env[-1][1]:
            env.append((b, d))
    return env


SLACK = 0.02     # bits: a row this close outside GPTQ's range is compared on the nearest segment


def interpolate(env: list[tuple[float, float]], bits: float) -> float | None:
    """Δ_GPTQ at `bits`, linear between envelope points (extended by SLACK bits at both ends);
    None farther outside."""
    if not env or not env[0][0] - SLACK <= bits <= env[-1][0] + SLACK:
        return None
    if len(env) == 1:
        return env[0][1]
    i = next((i for i in range(len(env) - 1) if bits <= env[i + 1][0]), len(env) - 2)
    (b0, d0), (b1, d1) = env[i], env[i + 1]
    return d0 + (d1 - d0) * (bits - b0) / (b1 - b0)


def ratios(rows: dict) -> dict[str, dict]:
    """{row: {"effective" | "resident" | "gpu": ratio | None}} for the SSQR/HPTQ/HRTN rows."""
    if "base" not in rows:
        return {}
    base = rows["base"]["ppl"]
    out = {}
    for key in ("effective_bits", "resident_bits", "gpu_resident_bits"):
        for name, r in rows.items():
            env = gptq_envelope(rows, key, calibration(r))     # GPTQ on the same calibration
            if (r["spec"] or {}).get("format") in COMPARED and env:
                ref = None if r.get(key) is None else interpolate(env, r[key])
                out.setdefault(name, {})[key.split("_")[0]] = \
                    None if ref is None or ref <= 0 else (r["ppl"] - base) / ref
    return out


def fmt(x, spec=".3f") -> str:
    return "–" if x is None else format(x, spec)


def quantize_time(row: dict) -> str:
    """The quantizer's wall seconds, allocation plan included; rows cached before that was timed show
    the layers' seconds, '+ plan' where a plan ran."""
    if "quantize_wall_seconds" in row:
        return f"{row['quantize_wall_seconds']:.0f}"
    planned = (row.get("spec") or {}).get("allocation", "uniform") != "uniform"
    return f"{row.get('quantize_seconds', 0):.0f}" + (" + plan" if planned else "")


def earlier_rows(commit: str, path: str = "benchmarks/results/quality.json") -> dict:
    """{"commit", "date", "rows": {row: row}, "ratios"} of the results file as committed at `commit` (git show)."""
    import subprocess
    old = json.loads(subprocess.run(["git", "show", f"{commit}:{path}"], cwd=RESULTS.parent.parent, check=True,
                                    capture_output=True, text=True).stdout)
    return {"commit": commit, "date": old["date"], "rows": {r["row"]: r for r in old["rows"]},
            "ratios": old["ratios"]}


def earlier_table(earlier: dict, rows: dict) -> list[str]:
    """Markdown lines: the earlier file's rows that this run did not recompute, marked with their date."""
    names = [n for n in earlier["rows"] if n not in rows]
    if not names:
        return []
    base = earlier["rows"]["base"]["ppl"]
    lines = ["", f"## Earlier rows, not recomputed under today's code ({earlier['date'][:10]}, "
                 f"benchmarks/results/quality.json at {earlier['commit']})", "",
             "Same model, calibration and eval windows; their ratios are against that run's GPTQ rows.", "",
             "| row | effective bits | resident bits (CPU) | GPU bits | perplexity | Δ vs base | ratio @eff | ratio @GPU |",
             "|---|---|---|---|---|---|---|---|"]
    for name in names:
        r, rr = earlier["rows"][name], earlier["ratios"].get(name, {})
        lines.append(f"| {name} | {r['effective_bits']:.3f} | {fmt(r.get('resident_bits'))} | "
                     f"{fmt(r.get('gpu_resident_bits'))} | {r['ppl']:.3f} | {r['ppl'] - base:+.3f} | "
                     f"{fmt(rr.get('effective'), '.0%')} | {fmt(rr.get('gpu'), '.0%')} |")
    return lines


def markdown(rows: dict, missing: list[str], meta: dict, rat: dict, stem: str = "quality",
             earlier: dict | None = None) -> str:
    base = rows.get("base", {}).get("ppl")
    first = next(iter(rows.values()), None)
    evaluated = f"{first['scored_tokens']} tokens ({first['eval_windows']} windows)" if first else "?"
    lines = ["# Quality: SmolLM2-135M-Instruct on Austen (Pride and Prejudice)", "",
             f"Command: `{meta['command']}`  ", f"Date: {meta['date']}  ", f"Versions: {meta['versions']}  ",
             f"Device: {meta['device']}  ",
             f"Calibration: {meta['nsamples']} × {meta['seqlen']} tokens of the calib split; eval: first {evaluated}"
             " of the eval split in 1024-token windows, float32, exact dequantized weights.", "",
             "Effective bits: every stored byte. Resident bits: what the CPU serving runtime holds; GPU bits: "
             "what the GPU kernels keep (HPTQ Huffman-resident lanes; benchmarks/quality_bits.py). Ratio: Δppl / GPTQ's Δppl interpolated at the same bits "
             "(lower envelope of all GPTQ group sizes, linear in bits; – more than 0.02 bits outside GPTQ's range). Plot: "
             f"[{stem}.png]({stem}.png).", "",
             "HPTQ/HRTN row suffixes (issue 23): `-ldl` per-column steps α ∝ D^-1/2 (`--col-steps ldl`; `-ldl0.5`: "
             "α ∝ D^-1/4), `-fisher` one Lagrange multiplier for the model (`--allocation fisher`), `-ft` the "
             "float (Qronos) target, `-c128` calibrated on 128 × 512 tokens (compared with the `-c128` GPTQ rows).", "",
             "| row | effective bits | resident bits (CPU) | GPU bits | perplexity | Δ vs base | ratio @eff "
             "| ratio @res | ratio @GPU | outliers | quantize s | bound ≥ error (unclipped layers) |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for name, r in rows.items():
        form = (r["spec"] or {}).get("format")
        bound = {None: "", "rtn": "n/a (clipped)", "gptq": "n/a (clipped)", "hrtn": "n/a (no bound)"}.get(
            form, r.get("bound_holds_where_unclipped"))
        rr = rat.get(name, {})
        lines.append(f"| {name} | {r['effective_bits']:.3f} | {fmt(r.get('resident_bits'))} | "
                     f"{fmt(r.get('gpu_resident_bits'))} | {r['ppl']:.3f} | "
                     f"{fmt(None if base is None else r['ppl'] - base, '+.3f')} | {fmt(rr.get('effective'), '.0%')} | "
                     f"{fmt(rr.get('resident'), '.0%')} | {fmt(rr.get('gpu'), '.0%')} | "
                     f"{fmt(r.get('outlier_rate'), '.2%')} | "
                     f"{quantize_time(r)} | {bound} |")
    if missing:
        lines += ["", f"Not run yet (no cached result for these settings and code): {', '.join(missing)}."]
    if earlier:
        lines += earlier_table(earlier, rows)
    return "\n".join(lines) + "\n"


def plot(rows: dict, path: Path) -> bool:
    """Perplexity against effective and resident bits, one line per family; False without matplotlib."""
    try:
        import matplotlib
        import matplotlib.ticker
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    fams: dict[str, list[dict]] = {}
    for r in rows.values():
        if r["spec"] is not None:
            fams.setdefault(family(r), []).append(r)
    fig, axes = plt.subplots(1, 3, figsize=(19, 5), sharey=True)
    for ax, key, title in zip(axes, ("effective_bits", "resident_bits", "gpu_resident_bits"),
                              ("effective (stored)", "CPU-resident", "GPU-resident")):
        for fam, rs in sorted(fams.items()):
            rs = sorted((r for r in rs if r.get(key) is not None), key=lambda r: r[key])
            # Resident bits: markers only (GPTQ w3 and w4 hold the same 4-bit codes, so a line would zigzag).
            ax.plot([r[key] for r in rs], [r["ppl"] for r in rs], marker="o", label=fam,
                    ls="-" if key == "effective_bits" else "none")
        if "base" in rows:
            ax.axhline(rows["base"]["ppl"], color="k", ls="--", lw=1, label=f"base {rows['base']['ppl']:.2f}")
        ax.set_xlabel(f"{title} bits per weight")
        ax.set_yscale("log")
        ax.yaxis.set_major_formatter(matplotlib.ticker.ScalarFormatter())
        ax.yaxis.set_minor_formatter(matplotlib.ticker.FormatStrFormatter("%.0f"))
        ax.grid(True, which="both", alpha=0.3)
    axes[0].set_ylabel("perplexity (eval split, log scale)")
    axes[0].legend(fontsize=8)
    fig.suptitle("SmolLM2-135M-Instruct: perplexity against bits per weight")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def write_results(rows: dict, missing: list[str], args, command: str, stem: Path = RESULTS / "quality",
                  earlier: dict | None = None) -> None:
    """<stem>.json (all rows, ratios, settings), <stem>.md (table) and <stem>.png (plot); `earlier`
    (earlier_rows()): an older file's rows this run lacks, listed apart with their date."""
    import transformers
    meta = {"command": command, "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "versions": {"python": platform.python_version(), "torch": torch.__version__,
                         "transformers": transformers.__version__, "threads": torch.get_num_threads()},
            "device": f"cpu ({platform.processor() or platform.machine()}, {os.cpu_count()} cores shared)",
            "nsamples": args.nsamples, "seqlen": args.seqlen, "max_windows": args.max_windows}
    rat = ratios(rows)
    stem.parent.mkdir(parents=True, exist_ok=True)
    kept = None if not earlier else {"commit": earlier["commit"], "date": earlier["date"],
                                     "rows": [r for n, r in earlier["rows"].items() if n not in rows]}
    stem.with_suffix(".json").write_text(json.dumps({**meta, "rows": list(rows.values()), "ratios": rat,
                                                     "missing": missing, "earlier": kept}, indent=1) + "\n")
    stem.with_suffix(".md").write_text(markdown(rows, missing, meta, rat, stem.name, earlier))
    if not plot(rows, stem.with_suffix(".png")):
        print(f"matplotlib is not installed (pip install matplotlib): {stem.name}.png not written")
