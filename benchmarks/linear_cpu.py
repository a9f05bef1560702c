"""Where a decode step's linear time goes on CPU: every fused linear of SmolLM2-135M, per kernel, at
the batch sizes a server sees (M = 1 … 64 tokens), against bf16 `F.linear` in the same run.

Layers are built exactly as the vLLM plugin builds them (babai_kernels.layer_spec.shard_layer on the
serving checkpoints: q/k/v and gate/up fused) and served by the chooser's kernel classes:
BabaiLutCPU (SSQR-w4, HPTQ-4.3 and HPTQ-3.3 layouts), TorchInt4CPU (SSQR-w4), and vLLM's CPUWNA16
through VllmMixedPrecision on the SSQR-w4 codes (the kernel stock vLLM runs for the GPTQ-w4 export,
here plus the residual). Each time is the best of 5 rounds of `--iters` calls; the per-step total
multiplies by the number of decoder layers. Compare the totals with 1 / (decode tok/s) of
benchmarks/results/serving_cpu.md for the share of a step spent outside the linears.

Needs the serving checkpoints (`python -m benchmarks.serving_cpu --checkpoints-only`). Writes
benchmarks/results/linear_cpu.{json,md}.

    python -m benchmarks.linear_cpu [--threads N] [--iters N]
"""
from __future__ import annotations

import argparse
import datetime
import json
import time
from pathlib import Path

import torch
from safetensors.torch import load_file

from benchmarks.serving_cpu import CKPTS, checkpoint_path
from benchmarks.serving_report import device, versions

RESULTS = Path(__file__).parent / "results"
MS = (1, 2, 4, 8, 16, 64)
FUSED = {"qkv_proj": ("self_attn", ("q_proj", "k_proj", "v_proj")), "o_proj": ("self_attn", ("o_proj",)),
         "gate_up_proj": ("mlp", ("gate_proj", "up_proj")), "down_proj": ("mlp", ("down_proj",))}


def init_vllm_single_process() -> None:
    """vLLM's parallel state for one CPU process (its parameter classes ask for the TP rank)."""
    from vllm.config import VllmConfig, set_current_vllm_config
    from vllm.distributed import init_distributed_environment, initialize_model_parallel
    with set_current_vllm_config(VllmConfig()):
        init_distributed_environment(world_size=1, rank=0, local_rank=0, backend="gloo",
                                     distributed_init_method="tcp://127.0.0.1:29533")
        initialize_model_parallel(1, 1)


def layer_specs(row: str, layer: int):
    """{fused name: LinearSpec} of decoder layer `layer` in serving checkpoint `row`."""
    from babai_kernels.layer_spec import FORMATS, Sibling, shard_layer
    from babai_kernels.contract import BabaiCheckpointConfig

    folder = checkpoint_path(row)
    tensors = load_file(folder / "model.safetensors")
    config = json.loads((folder / "config.json").read_text())
    qc = BabaiCheckpointConfig.from_dict(config["quantization_config"], str(folder / "config.json"))
    fmt = FORMATS[qc.format]
    specs = {}
    for fused, (block, modules) in FUSED.items():
        siblings = []
        for m in modules:
            prefix = f"model.layers.{layer}.{block}.{m}"
            t = {n: tensors[f"{prefix}.{n}"] for n in fmt.tensor_names}
            rows = fmt.rows(t, config["intermediate_size"] if m == "down_proj" else config["hidden_size"], qc)
            siblings.append(Sibling(prefix, t, None, rows))
        k = config["intermediate_size"] if fused == "down_proj" else config["hidden_size"]
        specs[fused] = shard_layer(fmt, siblings, k, None, torch.device("cpu"), qc, torch.bfloat16)
    return specs, config["num_hidden_layers"]


def best_us(fn, iters: int) -> float:
    for _ in range(10):
        fn()
    rounds = []
    for _ in range(5):
        t = time.perf_counter()
        for _ in range(iters):
            fn()
        rounds.append((time.perf_counter() - t) / iters * 1e6)
    return min(rounds)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--threads", type=int, default=2, help="torch threads (default 2: the whole machine)")
    ap.add_argument("--iters", type=int, default=200, help="calls per timing round (default 200)")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    init_vllm_single_process()
    from babai_kernels.choices.cpu import BabaiLutCPU, TorchInt4CPU
    from vllm_babai.mp_kernel import VllmMixedPrecision

    cases = {"BabaiLutCPU ssqr-w4": ("ssqr-w4", BabaiLutCPU),
             "BabaiLutCPU hptq-4.3": ("hptq-4.3", BabaiLutCPU),
             "BabaiLutCPU hptq-3.3": ("hptq-3.3", BabaiLutCPU),
             "TorchInt4CPU ssqr-w4": ("ssqr-w4", TorchInt4CPU),
             "CPUWNA16 ssqr-w4 (stock GPTQ's kernel + residual)": ("ssqr-w4", VllmMixedPrecision)}
    missing = sorted({row for row, _ in cases.values() if not (checkpoint_path(row) / "model.safetensors").exists()})
    if missing:
        raise SystemExit(f"linear_cpu: serving checkpoints {missing} not in {CKPTS}; build them with "
                         "`python -m benchmarks.serving_cpu --checkpoints-only`")
    specs = {row: layer_specs(row, 5) for row in {r for r, _ in cases.values()}}
    layers = next(iter(specs.values()))[1]
    times: dict[str, dict[str, dict[int, float]]] = {}
    for fused, spec in specs["ssqr-w4"][0].items():
        n, k = spec.shape
        weight = torch.randn(n, k, dtype=torch.bfloat16)
        times.setdefault("bf16 F.linear", {})[fused] = {
            m: best_us(lambda x=torch.randn(m, k, dtype=torch.bfloat16): torch.nn.functional.linear(x, weight), args.iters)
            for m in MS}
        for name, (row, cls) in cases.items():
            kernel = cls(specs[row][0][fused])
            times.setdefault(name, {})[fused] = {
                m: best_us(lambda x=torch.randn(m, k, dtype=torch.bfloat16): kernel.apply(x, None), args.iters) for m in MS}
        print(f"{fused} {n}x{k} done", flush=True)
    step = {name: {m: layers * sum(t[m] for t in per.values()) / 1000 for m in MS} for name, per in times.items()}
    shapes = {fused: list(spec.shape) for fused, spec in specs["ssqr-w4"][0].items()}
    result = {"date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
              "device": device(), "versions": versions(), "threads": args.threads, "iters": args.iters,
              "decoder_layers": layers, "shapes_NxK": shapes, "us_per_call": times, "ms_per_step": step,
              "command": f"python -m benchmarks.linear_cpu --threads {args.threads} --iters {args.iters}"}
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "linear_cpu.json").write_text(json.dumps(result, indent=1) + "\n")
    (RESULTS / "linear_cpu.md").write_text(markdown(result))
    print(markdown(result))
    return 0


def markdown(r: dict) -> str:
    base = r["ms_per_step"]["bf16 F.linear"]
    out = ["# Linear layers of one decode step on CPU (SmolLM2-135M, per kernel)", "",
           f"Date: {r['date']}; device: {r['device']}; torch threads: {r['threads']}; command: `{r['command']}`.",
           f"Versions: {r['versions']}.", "",
           f"Per step = {r['decoder_layers']} decoder layers × (qkv + o + gate_up + down); ms, best of 5 rounds; "
           "x bf16 = bf16 time / kernel time (> 1: faster than bf16).", "",
           "| kernel | " + " | ".join(f"M={m}" for m in MS) + " | " + " | ".join(f"x bf16 M={m}" for m in MS) + " |",
           "|---" * (1 + 2 * len(MS)) + "|"]
    for name, per in r["ms_per_step"].items():
        out.append(f"| {name} | " + " | ".join(f"{per[m]:.2f}" for m in MS) + " | "
                   + " | ".join(f"{base[m] / per[m]:.2f}" for m in MS) + " |")
    out += ["", "## Per layer shape (µs per call)", "",
            "| kernel | shape | " + " | ".join(f"M={m}" for m in MS) + " |", "|---" * (2 + len(MS)) + "|"]
    for name, per in r["us_per_call"].items():
        for fused, t in per.items():
            out.append(f"| {name} | {fused} {'x'.join(map(str, r['shapes_NxK'][fused]))} | "
                       + " | ".join(f"{t[m]:.1f}" for m in MS) + " |")
    return "\n".join(out) + "\n"


if __name__ == "__main__":
    raise SystemExit(main())
