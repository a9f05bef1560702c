"""Decode speed of `model.generate` through transformers on this CPU: bf16 against babai SSQR-w4 and
HPTQ-4.3 loaded with `from_pretrained` (transformers_babai), batch 1 and 8, greedy, 64 new tokens.

    python -m benchmarks.hf_cpu [--rounds 5] [--threads N]

Decode tokens/s = batch × 63 / (t(64 new tokens) − t(1 new token)): the prefill and the first token
cancel. Prompts: 32-token windows of the Austen eval split (same length, no padding). Rounds run the
rows interleaved (bf16, ssqr-w4, hptq-4.3, bf16, ...) so the box's drift hits every row alike; the
table reports medians over rounds. Resident bytes: the quantized linears' kernel tensors against
the same linears' bf16 weights and their on-disk bytes. Checkpoints: the serving benchmark's cache
(benchmarks/serving_cpu.py, quantized on first use). Writes benchmarks/results/hf_cpu.{json,md}.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import statistics
import sys
import time
from pathlib import Path

import torch

from benchmarks.portable import portable

RESULTS = Path(__file__).resolve().parent / "results"
ROWS = ("bf16", "ssqr-w4", "hptq-4.3")
BATCHES = (1, 8)
NEW_TOKENS, PROMPT_LEN = 64, 32


def cpu_name() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor()


def prompts(tokenizer, batch: int) -> torch.Tensor:
    """(batch, PROMPT_LEN) int64: consecutive 32-token windows from the start of the eval split."""
    from babai_quantizer import assets

    ids = tokenizer(assets.text_path("eval").read_text(encoding="utf-8")[:20000], add_special_tokens=False)["input_ids"]
    return torch.tensor(ids[:batch * PROMPT_LEN]).reshape(batch, PROMPT_LEN)


@torch.no_grad()
def generate_seconds(model, ids: torch.Tensor, new_tokens: int) -> float:
    """Wall seconds of one greedy `generate` of exactly `new_tokens` tokens."""
    start = time.perf_counter()
    out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=new_tokens,
                         min_new_tokens=new_tokens, do_sample=False, pad_token_id=0)
    seconds = time.perf_counter() - start
    assert out.shape[1] == ids.shape[1] + new_tokens
    return seconds


def linear_facts(model, name: str) -> dict:
    """Resident bytes of the (quantized) decoder linears, their on-disk bytes, the kernels used."""
    from transformers_babai import BabaiLinear, resident_bytes

    layers = [m for m in model.modules() if isinstance(m, BabaiLinear)]
    if not layers:
        dense = [m for n, m in model.named_modules() if isinstance(m, torch.nn.Linear) and ".layers." in n]
        nbytes = sum(m.weight.numel() * m.weight.element_size() for m in dense)
        return dict(linears=len(dense), resident_bytes=nbytes, disk_bytes=nbytes,
                    weights=sum(m.weight.numel() for m in dense),
                    kernels=["torch bf16 (oneDNN)"])
    resident, disk = resident_bytes(model)
    return dict(linears=len(layers), resident_bytes=resident, disk_bytes=disk,
                weights=sum(m.in_features * m.out_features for m in layers),
                kernels=sorted({getattr(m.kernel, "name", type(m.kernel).__name__) for m in layers}))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    import transformers

    from babai_quantizer import assets
    from benchmarks.serving_cpu import ensure_checkpoint
    from transformers_babai import load_model

    folders = {name: assets.model_dir() if name == "bf16" else ensure_checkpoint(name) for name in ROWS}
    models, facts = {}, {}
    for name, folder in folders.items():
        models[name], tokenizer = load_model(folder, "cpu", torch.bfloat16)
        facts[name] = linear_facts(models[name], name)
    inputs = {b: prompts(tokenizer, b) for b in BATCHES}
    for model in models.values():                          # warm-up (kernel build, allocator)
        generate_seconds(model, inputs[1], 4)
    times = {(n, b, t): [] for n in ROWS for b in BATCHES for t in (1, NEW_TOKENS)}
    load = [os.getloadavg()[0]]
    for r in range(args.rounds):
        for name in ROWS:
            for b in BATCHES:
                for t in (1, NEW_TOKENS):
                    times[name, b, t].append(generate_seconds(models[name], inputs[b], t))
        load.append(os.getloadavg()[0])
        print(f"round {r + 1}/{args.rounds} done", flush=True)

    rows = []
    for name in ROWS:
        row = dict(row=name, checkpoint=str(folders[name]), **facts[name])
        for b in BATCHES:
            rates = [b * (NEW_TOKENS - 1) / (t64 - t1) for t1, t64 in zip(times[name, b, 1], times[name, b, NEW_TOKENS])]
            row[f"decode_tok_s@{b}"] = statistics.median(rates)
            row[f"decode_tok_s@{b}_rounds"] = rates
        rows.append(row)
    base = rows[0]
    for row in rows:
        for b in BATCHES:
            row[f"x_bf16@{b}"] = row[f"decode_tok_s@{b}"] / base[f"decode_tok_s@{b}"]
    result = dict(
        command="python -m benchmarks.hf_cpu " + shlex.join(argv if argv is not None else sys.argv[1:]),
        date=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), device=f"{cpu_name()}, {os.cpu_count()} cores",
        threads=args.threads, versions=dict(python=platform.python_version(), torch=torch.__version__,
                                            transformers=transformers.__version__),
        rounds=args.rounds, new_tokens=NEW_TOKENS, prompt_len=PROMPT_LEN, load_avg_per_round=load, rows=rows)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "hf_cpu.json").write_text(portable(json.dumps(result, indent=1)) + "\n")
    (RESULTS / "hf_cpu.md").write_text(portable(report(result)))
    print(report(result))
    return 0


def report(r: dict) -> str:
    lines = [
        "# Decode speed through transformers on CPU (`model.generate`)", "",
        f"`{r['command']}` — {r['date']}; {r['device']}, {r['threads']} torch threads; Python "
        f"{r['versions']['python']}, torch {r['versions']['torch']}, transformers {r['versions']['transformers']}.",
        "",
        f"SmolLM2-135M-Instruct, bf16 activations, greedy, {r['new_tokens']} new tokens after {r['prompt_len']}-token "
        f"prompts; decode tokens/s = batch × {r['new_tokens'] - 1} / (t({r['new_tokens']} tokens) − t(1 token)), "
        f"median of {r['rounds']} interleaved rounds (per-round values in hf_cpu.json; load average per round "
        f"{', '.join(f'{x:.1f}' for x in r['load_avg_per_round'])}). babai rows load with "
        "`from_pretrained` through transformers_babai. Resident: bytes the quantized decoder linears hold "
        "(bf16 row: the same linears' bf16 weights), bits per weight.", "",
        "| row | kernel | decode tok/s @1 | @8 | × bf16 @1 | @8 | resident bits/weight | on-disk bits/weight | resident MB |",
        "|---|---|---|---|---|---|---|---|---|"]
    for row in r["rows"]:
        lines.append(f"| {row['row']} | {', '.join(row['kernels'])} | {row['decode_tok_s@1']:.1f} | "
                     f"{row['decode_tok_s@8']:.1f} | {row['x_bf16@1']:.2f} | {row['x_bf16@8']:.2f} | "
                     f"{8 * row['resident_bytes'] / row['weights']:.2f} | {8 * row['disk_bytes'] / row['weights']:.2f} | "
                     f"{row['resident_bytes'] / 1e6:.1f} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
