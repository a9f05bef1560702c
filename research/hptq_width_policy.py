"""Does HPTQ's dense-width policy (runtime.hptq_dense_widths) hold on the whole model, where the weights
stream from memory instead of sitting in cache as in benchmarks/linear_cpu.py's per-layer loops?

Every fused linear of a checkpoint's decoder layers is served by BabaiLutCPU under four policies:
'time' = the committed cost constants (kernel time measured per layer), 'bw<β>' = the same plus β ns per
byte of dense code (a memory-streaming term that favours narrower widths). Timed at M = 1 and 8, 1 thread,
7 rounds with the policies interleaved; printed: resident bits/weight, median ms per step of linears, and
the median per-round speed-up over 'time'.

    python -m research.hptq_width_policy CHECKPOINT_FOLDER      (an HPTQ checkpoint, e.g. the demo's)
"""
from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import torch

from babai_kernels import runtime
from babai_kernels.choices.cpu import BabaiLutCPU
from benchmarks.linear_cpu import folder_layer_specs

POLICIES = {"time": 0.0, "bw0.05": 0.05, "bw0.1": 0.1, "bw0.2": 0.2}   # β: ns per byte of dense code


def model_specs(folder: Path) -> list:
    """LinearSpec of every fused linear of the checkpoint (as the vLLM plugin builds them), fresh each call."""
    return [spec for layer in folder_layer_specs(folder)[0] for spec in layer.values()]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("checkpoint", type=Path, help="an HPTQ checkpoint folder")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    base = dict(runtime.CPU_NS_PER_WEIGHT)
    kernels, bits = {}, {}
    try:
        for name, beta in POLICIES.items():
            runtime.CPU_NS_PER_WEIGHT.update({b: base[b] + beta * b / 8 for b in base})
            specs = model_specs(args.checkpoint)
            kernels[name] = [BabaiLutCPU(s) for s in specs]
            bits[name] = 8 * sum(k.resident_bytes() for k in kernels[name]) / sum(s.shape[0] * s.shape[1] for s in specs)
    finally:
        runtime.CPU_NS_PER_WEIGHT.update(base)
    xs = {m: {k: torch.randn(m, k, dtype=torch.bfloat16) for k in {s.shape[1] for s in specs}} for m in (1, 8)}
    ms = {m: {name: [] for name in POLICIES} for m in (1, 8)}
    for _ in range(7):
        for m in (1, 8):
            for name, ks in kernels.items():
                t = time.perf_counter()
                for _ in range(3):
                    for kern, spec in zip(ks, specs):
                        kern.apply(xs[m][spec.shape[1]], None)
                ms[m][name].append((time.perf_counter() - t) / 3 * 1e3)
    for m in (1, 8):
        for name in POLICIES:
            ratio = statistics.median(b / x for b, x in zip(ms[m]["time"], ms[m][name]))
            print(f"M={m} {name:7s} resident {bits[name]:.3f} bits  step linears {statistics.median(ms[m][name]):.2f} ms"
                  f"  speedup vs 'time' {ratio:.3f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
