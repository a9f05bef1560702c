"""Per-linear output error of the quality rows' cached weights, every linear of all 30 layers (issue 15).

Why does SSQR w3's layer-error ratio to GPTQ (1.05 on the 21 linears at depths 0/14/29,
research/ssqr_layers.py) not carry to perplexity (132 % of GPTQ's Δppl, benchmarks/quality.py)?
For each row's dequantized weights Q (cached by benchmarks/quality.py) and every linear W, the
relative output error on calibration data with float-model inputs:
    err = tr((W−Q) H (W−Q)ᵀ) / tr(W H Wᵀ),   H = XᵀX / tokens over the Austen calib split (16 × 512),
from research.reduction_layers.capture_hessians (float model, every layer; q/k/v share an input,
gate/up one), evaluated in float64.
Per linear, GPTQ's error is interpolated log-linearly in bits between the six GPTQ rows
(research.ssqr_layers.gptq_reference, at each row's model-wide effective bits) and
ratio = SSQR / GPTQ(bits); summarized by geometric mean over linears, depth buckets and linear types.
Then how the errors propagate: each row's weights put into the whole model, run on the first
PROPAGATION_WINDOWS calibration windows: relative squared error of the residual stream after
every layer, ||h_Q − h||² / ||h||² per token averaged over tokens, and the KL divergence of the next-token distribution from
the float model's (mean over tokens); plus HYBRIDS, one row with one layer's weights taken from
another row (does that layer decide the gap?).

    python -m research.ssqr_layer_errors [--threads 1]

Writes research/results/ssqr_layer_errors.{json,md}.
"""
from __future__ import annotations

import argparse
import json
import math
import platform
import re
import sys
import time
from pathlib import Path

import torch
import transformers

from babai_quantizer import assets
from babai_quantizer.calibration import calibration_windows, decoder_layers, load_causal_lm
from benchmarks.cache_keys import code_version, stable_hash
from benchmarks.quality import CACHE, EVAL_SOURCES
from research.reduction_layers import capture_hessians
from research.ssqr_layers import gptq_reference
from research.common import write_json, write_markdown

GPTQ_ROWS = [f"gptq-w{b}g{g}" for b in (3, 4) for g in (32, 64, 192)]
SSQR_ROWS = {"w3": "ssqr-w3g192-1%-cap-rms", "w4": "ssqr-w4g192-1%-cap-rms"}
OTHER_ROWS = ["hptq-3.3"]
TYPES = ["q", "k", "v", "o", "gate", "up", "down"]
BUCKETS = [(0, 9), (10, 19), (20, 29)]
SAMPLE_DEPTHS = (0, 14, 29)      # research/ssqr_layers.py's default
PROPAGATION_ROWS = ["gptq-w3g64", "gptq-w3g32", "ssqr-w3g192-1%-cap-rms", "gptq-w4g64",
                    "ssqr-w4g192-1%-cap-rms", "hptq-3.3"]
# hybrids: (label, row, depth, row whose weights that depth takes) — where does w3 SSQR lose?
HYBRIDS = [("ssqr-w3 with gptq-w3g64's layer 28", "ssqr-w3g192-1%-cap-rms", 28, "gptq-w3g64"),
           ("gptq-w3g64 with ssqr-w3's layer 28", "gptq-w3g64", 28, "ssqr-w3g192-1%-cap-rms")]
PROPAGATION_WINDOWS = 4


def row_files(row: str, max_windows: int = 32) -> tuple[Path, dict]:
    """The newest <row>-<qkey>.weights.pt whose matching <row>-<key>.json exists, and that JSON."""
    ev = code_version(EVAL_SOURCES)
    for path in sorted(CACHE.glob("*.weights.pt"), key=lambda p: p.stat().st_mtime, reverse=True):
        m = re.fullmatch(r"(.+)-([0-9a-f]{16})\.weights\.pt", path.name)
        js = CACHE / f"{row}-{stable_hash([m.group(2), max_windows, ev])}.json" if m and m.group(1) == row else None
        if js is not None and js.is_file():
            return path, json.loads(js.read_text())
    raise FileNotFoundError(f"no cached weights with a result JSON for {row} under {CACHE}")


def float_model(nsamples: int, seqlen: int, seed: int):
    """Float model's {linear name: (W float32, H (K, K) of its input)}
    (research.reduction_layers.capture_hessians, all layers), the model and its calibration windows."""
    model, tokenizer = load_causal_lm(assets.model_dir())
    model.float().eval()
    windows = calibration_windows(tokenizer, assets.text_path("calib").read_text(encoding="utf-8"),
                                  nsamples, seqlen, seed)
    hessians = capture_hessians(list(range(len(decoder_layers(model)))), nsamples, seqlen, seed)
    linears = {f"model.layers.{d}.{name}": (w, H) for d, groups in hessians.items()
               for H, weights in groups.values() for name, w in weights.items()}
    return linears, model, windows


@torch.no_grad()
def propagation(model, windows: list[torch.Tensor], W: dict, rows: list[str],
                hybrids: list[tuple[str, str, int, str]]) -> dict:
    """{row or hybrid label: {"hidden_error": [per layer], "kl": mean KL(float ‖ row)}} on `windows`."""
    def run():
        out = [model(input_ids=w[None], output_hidden_states=True) for w in windows]
        return [o.hidden_states[1:] for o in out], [torch.log_softmax(o.logits.double(), -1) for o in out]
    ref_h, ref_lp = run()
    modules = dict(model.named_modules())
    result = {}
    cases = [(row, row, None, None) for row in rows] + hybrids
    for label, row, depth, other in cases:
        Q = torch.load(row_files(row)[0])["weights"]
        if depth is not None:
            O = torch.load(row_files(other)[0])["weights"]
            Q.update({n: O[n] for n in W if parse(n)[0] == depth})
            del O
        for n in W:
            modules[n].weight.data.copy_(Q[n])
        hs, lps = run()
        # per-token relative error, averaged over tokens: a few tokens with massive hidden
        # states (the attention sink) would otherwise decide a pooled ratio
        tokens = sum(r[0].shape[1] for r in ref_h)
        err = [sum(float((((h[d] - r[d]) ** 2).sum(-1) / (r[d] ** 2).sum(-1)).sum())
                   for h, r in zip(hs, ref_h)) / tokens for d in range(len(ref_h[0]))]
        kl = sum(float((r.exp() * (r - q)).sum()) for q, r in zip(lps, ref_lp)) / sum(
            r.shape[1] for r in ref_lp)
        result[label] = dict(hidden_error=err, kl=kl)
        print(label, f"hidden error after layer 15 {err[15]:.4f}, last {err[-1]:.4f}, KL {kl:.4f}", flush=True)
        for n in W:
            modules[n].weight.data.copy_(W[n])
        del Q
    return result


def parse(name: str) -> tuple[int, str]:
    m = re.search(r"layers\.(\d+)\.\w+\.(\w+)_proj$", name)
    return int(m.group(1)), m.group(2)


def geomean(xs) -> float:
    xs = list(xs)
    return math.exp(sum(math.log(x) for x in xs) / len(xs)) if xs else float("nan")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--nsamples", type=int, default=16)
    p.add_argument("--seqlen", type=int, default=512)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    command = "python -m research.ssqr_layer_errors " + " ".join(argv or sys.argv[1:])
    start = time.perf_counter()
    linears, model, windows = float_model(args.nsamples, args.seqlen, args.seed)
    capture_s = time.perf_counter() - start
    W = {n: w for n, (w, _) in linears.items()}
    H = {n: h.double() for n, (_, h) in linears.items()}
    denom = {n: float(((W[n].double() @ H[n]) * W[n].double()).sum()) for n in W}
    err, facts = {}, {}
    for row in GPTQ_ROWS + list(SSQR_ROWS.values()) + OTHER_ROWS:
        path, js = row_files(row)
        Q = torch.load(path)["weights"]
        err[row] = {}
        for n in W:
            D = (W[n] - Q[n]).double()
            err[row][n] = float(((D @ H[n]) * D).sum()) / denom[n]
        facts[row] = dict(file=path.name, effective_bits=js["effective_bits"], ppl=js["ppl"],
                          sum_rel_error=sum(err[row].values()))
        print(row, facts[row], f"{time.perf_counter() - start:.0f}s", flush=True)
        del Q

    summary = {}
    for tag, srow in SSQR_ROWS.items():
        bits = facts[srow]["effective_bits"]
        per = {}
        for n in W:
            ref, extrap = gptq_reference([(facts[g]["effective_bits"], err[g][n]) for g in GPTQ_ROWS], bits)
            per[n] = dict(ratio=err[srow][n] / ref, ssqr=err[srow][n], gptq_interp=ref, extrapolated=extrap)
        by = lambda pred: geomean(r["ratio"] for n, r in per.items() if pred(*parse(n)))  # noqa: E731
        sample = [n for n in W if parse(n)[0] in SAMPLE_DEPTHS]
        summary[tag] = dict(
            row=srow, bits=bits, linears=len(per), extrapolated=sum(r["extrapolated"] for r in per.values()),
            geomean=geomean(r["ratio"] for r in per.values()),
            sum_ratio=sum(r["ssqr"] for r in per.values()) / sum(r["gptq_interp"] for r in per.values()),
            sample_geomean=geomean(per[n]["ratio"] for n in sample),
            sample_sum_ratio=sum(per[n]["ssqr"] for n in sample) / sum(per[n]["gptq_interp"] for n in sample),
            by_depth={f"{a}-{b}": by(lambda d, t, a=a, b=b: a <= d <= b) for a, b in BUCKETS},
            by_type={t: by(lambda d, tt, t=t: tt == t) for t in TYPES},
            worst=sorted(({"linear": n, **r} for n, r in per.items()), key=lambda r: -r["ratio"])[:10],
            per_linear=per)
    # hptq-3.3 against the same GPTQ curve, for comparison
    hb = facts["hptq-3.3"]["effective_bits"]
    h_ref = {n: gptq_reference([(facts[g]["effective_bits"], err[g][n]) for g in GPTQ_ROWS], hb)[0] for n in W}
    summary["hptq-3.3"] = dict(row="hptq-3.3", bits=hb, geomean=geomean(err["hptq-3.3"][n] / h_ref[n] for n in W),
                               sum_ratio=sum(err["hptq-3.3"].values()) / sum(h_ref.values()))
    prop = propagation(model, windows[:PROPAGATION_WINDOWS], W, PROPAGATION_ROWS, HYBRIDS)
    seconds = time.perf_counter() - start
    meta = dict(command=command, date=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                versions=dict(python=platform.python_version(), torch=torch.__version__,
                              transformers=transformers.__version__, threads=args.threads),
                seconds=seconds, capture_seconds=capture_s, calibration=[args.nsamples, args.seqlen, args.seed])
    write_json("ssqr_layer_errors", {**meta, "rows": facts, "summary": summary, "propagation": prop,
                                     "per_linear_error": err})
    write_md(meta, facts, summary, prop)
    return 0


def write_md(meta: dict, facts: dict, summary: dict, prop: dict) -> None:
    L = ["# SSQR per-linear output error, all 30 layers (issue 15)", "",
         f"Command: `{meta['command']}`  ", f"Date: {meta['date']}  ", f"Versions: {meta['versions']}  ",
         f"Runtime: {meta['seconds']:.0f} s (Gram capture {meta['capture_seconds']:.0f} s)", "",
         "err = tr((W−Q)H(W−Q)ᵀ)/tr(WHWᵀ), H = XᵀX of the float model's inputs on the Austen calib split "
         "(16 × 512), Q the dequantized weights cached by benchmarks/quality.py. Ratio: SSQR err / GPTQ err "
         "interpolated log-linearly at SSQR's model-wide effective bits (six GPTQ rows). 'sum ratio' = "
         "Σ SSQR err / Σ GPTQ(bits) err over linears. 'sample' = depths 0/14/29 only (ssqr_layers.py's linears).", "",
         "| row | effective bits | ppl | Σ rel. error (210 linears) |", "|---|---|---|---|"]
    L += [f"| {r} | {f['effective_bits']:.3f} | {f['ppl']:.3f} | {f['sum_rel_error']:.4f} |" for r, f in facts.items()]
    L += ["", "| SSQR | bits | geomean ratio (all) | sum ratio (all) | geomean (sample 0/14/29) | sum ratio (sample) | "
          + " | ".join(f"depth {b}" for b in summary["w3"]["by_depth"]) + " | "
          + " | ".join(summary["w3"]["by_type"]) + " |", "|" + "---|" * (6 + 3 + len(TYPES))]
    for tag in SSQR_ROWS:
        s = summary[tag]
        L.append(f"| {tag} | {s['bits']:.3f} | {s['geomean']:.3f} | {s['sum_ratio']:.3f} | {s['sample_geomean']:.3f} | "
                 f"{s['sample_sum_ratio']:.3f} | " + " | ".join(f"{v:.3f}" for v in s["by_depth"].values()) + " | "
                 + " | ".join(f"{v:.3f}" for v in s["by_type"].values()) + " |")
    h = summary["hptq-3.3"]
    L += ["", f"hptq-3.3 ({h['bits']:.3f} bits) vs the same GPTQ curve: geomean ratio {h['geomean']:.3f}, "
          f"sum ratio {h['sum_ratio']:.3f}."]
    for tag in SSQR_ROWS:
        L += ["", f"Worst 10 linears, {tag}:", "", "| linear | ratio | SSQR err | GPTQ(bits) err |", "|---|---|---|---|"]
        L += [f"| {w['linear'].replace('model.layers.', '')} | {w['ratio']:.3f} | {w['ssqr']:.5f} | "
              f"{w['gptq_interp']:.5f} |" for w in summary[tag]["worst"]]
    depths = [0, 5, 10, 15, 20, 25, 26, 27, 28, 29]
    L += ["", f"Propagation through the whole model ({PROPAGATION_WINDOWS} calib windows): residual-stream "
          "error ||h_Q − h||² / ||h||² per token, mean over tokens, after layer d (29: after the final norm, as the LM head sees it), and KL(float ‖ quantized) of the next-token "
          "distribution per token.", "",
          "| row | " + " | ".join(f"after {d}" for d in depths) + " | KL |", "|" + "---|" * (len(depths) + 2)]
    L += [f"| {r} | " + " | ".join(f"{p['hidden_error'][d]:.4f}" for d in depths) + f" | {p['kl']:.4f} |"
          for r, p in prop.items()]
    write_markdown("ssqr_layer_errors", L)


if __name__ == "__main__":
    sys.exit(main())
