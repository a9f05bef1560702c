"""Quality benchmark: perplexity vs effective bits on SmolLM2-135M-Instruct + Austen.

Rows: base (bf16), RTN, GPTQ (act-order), SSQR (1 % and 3 % outliers),
HPTQ and HRTN, near 3.1 and 4.1 effective bits, group size 64. Calibration on the Austen calib
split, perplexity on the eval split (Pride and Prejudice) in 1024-token windows.

Resumable: each row's result is cached (keyed by its settings) under
~/.cache/vllm-babai/quality-rows/, so re-running skips finished rows. Writes
benchmarks/results/quality.{json,md}.

    python benchmarks/quality.py [--rows NAME ...] [--max-windows N] [--nsamples N] [--seqlen N]
"""
from __future__ import annotations

import argparse
import datetime
import hashlib
import json
import platform
import shlex
import sys
import time
from pathlib import Path

import torch

from quantizer import assets
from quantizer.driver import QuantizeOptions, calibration_windows, load_causal_lm, quantize_model
from quantizer.evaluate import evaluate_text

RESULTS = Path(__file__).parent / "results"
CACHE = assets.cache_dir() / "quality-rows"
G = 64
ROWS: dict[str, dict | None] = {
    "base": None,
    "rtn-w3": dict(format="rtn", bits=3, group_size=G),
    "rtn-w4": dict(format="rtn", bits=4, group_size=G),
    "gptq-w3": dict(format="gptq", bits=3, group_size=G),
    "gptq-w4": dict(format="gptq", bits=4, group_size=G),
    "ssqr-w3-1%": dict(format="ssqr", bits=3, group_size=G, outlier_rate=0.01),
    "ssqr-w3-3%": dict(format="ssqr", bits=3, group_size=G, outlier_rate=0.03),
    "ssqr-w4-1%": dict(format="ssqr", bits=4, group_size=G, outlier_rate=0.01),
    "ssqr-w4-3%": dict(format="ssqr", bits=4, group_size=G, outlier_rate=0.03),
    "hptq-3.125": dict(format="hptq", target_bits=3.125),
    "hptq-4.125": dict(format="hptq", target_bits=4.125),
    "hrtn-3.125": dict(format="hrtn", target_bits=3.125),
    "hrtn-4.125": dict(format="hrtn", target_bits=4.125),
}
def versions() -> dict:
    import transformers
    return {"python": platform.python_version(), "torch": torch.__version__,
            "transformers": transformers.__version__, "machine": platform.machine(),
            "threads": torch.get_num_threads()}


def run_row(name: str, spec: dict | None, args, model_dir: Path, texts: dict) -> dict:
    key = hashlib.sha256(json.dumps([name, spec, args.nsamples, args.seqlen, args.max_windows, args.seed],
                                    sort_keys=True).encode()).hexdigest()[:16]
    cached = CACHE / f"{name}-{key}.json"
    if cached.is_file():
        return json.loads(cached.read_text())
    start = time.perf_counter()
    model, tokenizer = load_causal_lm(model_dir)
    row = {"row": name, "spec": spec}
    if spec is not None:
        windows = calibration_windows(tokenizer, texts["calib"], args.nsamples, args.seqlen, args.seed)
        result = quantize_model(model, windows, QuantizeOptions(**spec), progress=True)
        totals = result.report()["totals"]
        row.update(effective_bits=totals["effective_bits"], quantize_seconds=totals["seconds"],
                   bound_holds_where_unclipped=totals["bound_holds_where_unclipped"])
    else:
        row.update(effective_bits=16.0)
    ppl = evaluate_text(model, tokenizer, texts["eval"], window=1024, max_windows=args.max_windows, progress=True)
    row.update(ppl=ppl.ppl, scored_tokens=ppl.scored_tokens, seconds=time.perf_counter() - start)
    CACHE.mkdir(parents=True, exist_ok=True)
    cached.write_text(json.dumps(row, indent=1))
    return row


def write_results(rows: list[dict], args, command: str) -> None:
    meta = {"command": command, "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "versions": versions(), "model": "SmolLM2-135M-Instruct (bf16)", "calibration": "Austen calib split",
            "evaluation": "Austen eval split (Pride and Prejudice), 1024-token windows",
            "nsamples": args.nsamples, "seqlen": args.seqlen, "max_windows": args.max_windows, "group_size": G}
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "quality.json").write_text(json.dumps({**meta, "rows": rows}, indent=1) + "\n")
    lines = ["# Quality: SmolLM2-135M-Instruct on Austen (Pride and Prejudice)", "",
             f"Command: `{command}`  ", f"Date: {meta['date']}  ", f"Versions: {meta['versions']}  ",
             f"Calibration: {args.nsamples} × {args.seqlen} tokens; eval: {rows[0]['scored_tokens'] if rows else '?'} "
             f"tokens in 1024-token windows (max {args.max_windows}).", "",
             "| row | effective bits | perplexity | quantize s | bound ≥ error (unclipped layers) |",
             "|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['row']} | {r['effective_bits']:.3f} | {r['ppl']:.3f} | "
                     f"{r.get('quantize_seconds', 0):.0f} | {r.get('bound_holds_where_unclipped', '')} |")
    (RESULTS / "quality.md").write_text("\n".join(lines) + "\n")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rows", nargs="*", choices=sorted(ROWS), default=list(ROWS), help="rows to run (default: all)")
    p.add_argument("--nsamples", type=int, default=32)
    p.add_argument("--seqlen", type=int, default=512)
    p.add_argument("--max-windows", type=int, default=40, help="eval windows of 1024 tokens (None: all)")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    command = "python benchmarks/quality.py " + " ".join(shlex.quote(a) for a in (argv or sys.argv[1:]))
    model_dir = assets.model_dir()
    texts = {s: assets.text_path(s).read_text(encoding="utf-8") for s in ("calib", "eval")}
    rows = []
    for name in args.rows:
        rows.append(run_row(name, ROWS[name], args, model_dir, texts))
        print(json.dumps(rows[-1]))
        write_results(rows, args, command)
    return 0


if __name__ == "__main__":
    sys.exit(main())
