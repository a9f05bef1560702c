"""What int8 activations cost in quality: perplexity of the served checkpoints through the CPU kernel with
x rounded to int8 from `cpu_lut.ACT8_FROM` rows on (the default on AVX-512 VNNI hosts) and off.

    python -m benchmarks.act8_quality [--windows 8] [--threads N]

The kernel (BabaiLutCPU, bfloat16 activations, loaded with transformers_babai) rounds x to int8 per row and
block of ≤ 32 columns, ≤ 64 for x ⊙ α (HPTQ) (kernels/cpu_lut.cpp, a8::block_of) at prefill and large batches; decode (< ACT8_FROM rows)
keeps bfloat16 x. Each row's model is evaluated twice on the same 1,024-token windows of the Austen eval
split (Pride and Prejudice): every layer's `act8_from` at its default, then NEVER — same weights, same
kernel otherwise. The unquantized bf16 model and the checkpoints' float32 perplexity (dequantized weights,
the number benchmarks/quality.py reports) give the scale. Writes benchmarks/results/act8_quality.{json,md}.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
from pathlib import Path

import torch

RESULTS = Path(__file__).resolve().parent / "results"
ROWS = ("ssqr-w4", "ssqr-w3", "hptq-4.3", "hptq-3.3")


default: dict = {}


def set_act8(model, act8_from: int | None, forced: bool = False) -> int:
    """Every BabaiLutCPU layer's act8_from (None: pack's default); `forced`: the int8 path at every M from
    act8_from (dense_from NEVER: the avx2 variant's dense path takes over from its DENSE_FROM), else pack's
    dense_from; the number of layers changed."""
    from babai_kernels import cpu_lut
    from babai_kernels.choices.cpu import BabaiLutCPU

    layers = [m.kernel for m in model.modules() if isinstance(getattr(m, "kernel", None), BabaiLutCPU)]
    for k in layers:
        default.setdefault(k, (k.packed.act8_from, k.packed.dense_from))   # pack's choice, kept on the first call
    for k in layers:
        k.packed.act8_from = default[k][0] if act8_from is None else act8_from
        k.packed.dense_from = cpu_lut.NEVER if forced else default[k][1]
    return len(layers)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--windows", type=int, default=8, help="1,024-token windows of the eval split (default 8)")
    p.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    p.add_argument("--rows", nargs="+", choices=ROWS, default=list(ROWS))
    p.add_argument("--isa", choices=("avx512", "avx2"), default="avx512",
                   help="the variant whose int8 path to compare (avx2: run with BABAI_CPU_ISA=avx2)")
    p.add_argument("--act8-from", type=int, default=None,
                   help="int8 x: every layer's act8_from, before any dense path (default: pack's thresholds)")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)

    from babai_kernels import cpu_lut
    from babai_quantizer import assets
    from babai_quantizer.evaluate import evaluate_text
    from benchmarks.serving_cpu import ensure_checkpoint
    from benchmarks.serving_report import device, versions
    from transformers_babai import load_model

    features = cpu_lut.host_features()
    if cpu_lut.act8_from(args.isa, features, "group scales", 4) == cpu_lut.NEVER or cpu_lut.isa() != args.isa:
        print(f"act8_quality: this host does not take int8 activations on the {args.isa} variant (avx512: "
              f"{cpu_lut.ACT8_FEATURE} needed; avx2: BABAI_CPU_ISA=avx2 on an AVX-512 host; or {cpu_lut.ACT8_ENV}=0)",
              flush=True)
        return 2
    text = assets.text_path("eval").read_text(encoding="utf-8")
    ppl = lambda model, tok, **kw: evaluate_text(model, tok, text, 1024, "cpu", args.windows, progress=True, **kw).ppl

    base, tok = load_model(assets.model_dir(), "cpu", torch.bfloat16)
    rows = [dict(row="bf16 (unquantized)", bf16_x=ppl(base, tok))]
    del base
    for name in args.rows:
        folder = ensure_checkpoint(name)
        model, tok = load_model(folder, "cpu", torch.bfloat16)
        assert set_act8(model, cpu_lut.NEVER) > 0, f"{name}: no layer runs on BabaiLutCPU"
        off = ppl(model, tok)
        set_act8(model, args.act8_from, forced=args.act8_from is not None)
        on = ppl(model, tok)
        del model
        ref, tok = load_model(folder, "cpu", torch.float32)
        rows.append(dict(row=name, fp32=ppl(ref, tok), bf16_x=off, int8_x=on, delta_pct=100 * (on / off - 1)))
        del ref
        print(rows[-1], flush=True)
    r = dict(date=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"), device=device(),
             versions=versions(), windows=args.windows, window=1024, act8_from=args.act8_from or (cpu_lut.ACT8_FROM if args.isa == "avx512"
                                                                                 else cpu_lut.ACT8_FROM_AVX2),
             rows=rows, command="python -m benchmarks.act8_quality" + (f" --windows {args.windows}" if args.windows != 8 else "")
             + (f" --isa {args.isa}" if args.isa != "avx512" else "") + (f" --act8-from {args.act8_from}" if args.act8_from else ""))
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "act8_quality.json").write_text(json.dumps(r, indent=1) + "\n")
    (RESULTS / "act8_quality.md").write_text(markdown(r))
    print(markdown(r))
    return 0


def markdown(r: dict) -> str:
    f = lambda v: "—" if v is None else f"{v:.3f}"
    out = [f"# Int8 activations at prefill: perplexity ({r['date']})", "",
           f"Device: {r['device']['cpu']} ({', '.join(r['device']['isa'])}); versions: {r['versions']['torch']}, "
           f"{r['versions']['transformers']}; commit {r['versions']['git_commit'][:12]}"
           f"{' (dirty tree)' if r['versions']['git_dirty'] else ''}.", "",
           f"Perplexity on the first {r['windows']} windows of {r['window']} tokens of the Austen eval split, each "
           f"window one forward (every linear sees {r['window']} rows of x, past ACT8_FROM = {r['act8_from']}). "
           "bf16 x: the CPU kernel with bfloat16 activations (act8 off); int8 x: the same model and kernel with x "
           "rounded to int8 per row and block of ≤ 32 columns, ≤ 64 for HPTQ's x ⊙ α (the default on AVX-512 VNNI "
           "hosts); fp32: the "
           "checkpoint's dequantized weights in float32 (transformers_babai's reference).", "",
           "| model | fp32 | bf16 x | int8 x | int8 x vs bf16 x |", "|---|---|---|---|---|"]
    for row in r["rows"]:
        d = row.get("delta_pct")
        out.append(f"| {row['row']} | {f(row.get('fp32'))} | {f(row.get('bf16_x'))} | {f(row.get('int8_x'))} | "
                   f"{'—' if d is None else f'{d:+.2f} %'} |")
    out += ["", f"Command: `{r['command']}`", ""]
    return "\n".join(out)


if __name__ == "__main__":
    raise SystemExit(main())
