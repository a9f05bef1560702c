"""GPU benchmark: our quantized linear kernels vs torch bf16 matmul (cuBLAS), in the same run.

    python -m benchmarks.kernel_speed [--m 1 16 128] [--shapes 4096x4096 ...] [--cases ssqr]

Times y = x Wᵀ for Llama-3-8B/70B linear shapes at several M with CUDA-graph timing
(triton.testing.do_bench_cudagraph), reports the speedup over bf16 and the achieved fraction of
memory bandwidth (bytes of all stored weight tensors + x + y, over the device-to-device copy
bandwidth measured in the same run). Writes benchmarks/results/kernels_<gpu>.{json,md}.
Needs a CUDA GPU: on CPU it exits with code 2.

Kernel cases are a registry: a case has a `name` and `setup(n, k, m, x, device) -> (fn,
weight_bytes) | None` (None: not applicable at this M), where `fn()` computes y for the bf16
activations `x` (M, K). SSQR cases are defined here; benchmarks/hptq_cases.py's
`hptq_bench_cases([(K, N)], device)` dicts give the HPTQ cases (fused decode-GEMV for M ≤ fused_max_m, and
decode-then-matmul), adapted by `hptq_cases`.
Random weights are generated directly in the packed format (codes are random, so the inlier
code under an outlier is not forced to 0 — irrelevant to timing).
"""
from __future__ import annotations

import argparse
import datetime
import json
import platform
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch

from benchmarks.hptq_cases import hptq_bench_cases

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

SHAPES = {  # name: (K in, N out)
    "4096x4096": (4096, 4096), "4096->14336": (4096, 14336), "14336->4096": (14336, 4096),
    "4096->6144": (4096, 6144), "8192x8192": (8192, 8192), "8192->28672": (8192, 28672),
}
M_VALUES = (1, 2, 4, 8, 16, 32, 64, 128, 256, 1024)


@dataclass
class KernelCase:
    """One quantized-kernel configuration to time against bf16."""
    name: str
    setup: Callable[[int, int, int, torch.Tensor, torch.device],
                    tuple[Callable[[], torch.Tensor], int] | None]


def random_ssqr_tensors(n: int, k: int, bits: int, group_size: int, outlier_rate: float,
                        device: torch.device) -> dict[str, torch.Tensor]:
    """Random SSQR tensors in the §2 layout on `device` (strictly ascending outlier columns)."""
    cap = max(1, round(outlier_rate * k))
    stride = k // cap
    cols = torch.arange(cap, device=device) * stride + torch.randint(0, stride, (n, cap), device=device)
    vals = torch.randn(n, cap, device=device).half()
    vals = torch.where(vals == 0, torch.ones_like(vals), vals)
    return {
        "qweight": torch.randint(-2**31, 2**31 - 1, (k * bits // 32, n), dtype=torch.int32,
                                 device=device),
        "scales": (torch.rand(k // group_size, n, device=device) * 0.01 + 1e-3).half(),
        "perm": torch.randperm(k, device=device).int(),
        "outlier_cols": cols.to(torch.int16),
        "outlier_vals": vals,
    }


def ssqr_case(bits: int, outlier_rate: float, group_size: int = 128) -> KernelCase:
    from babai_kernels.common import stored_bits
    from babai_kernels.ssqr import prepare_ssqr, ssqr_linear

    def setup(n, k, m, x, device):
        tensors = random_ssqr_tensors(n, k, bits, group_size, outlier_rate, device)
        prepared = prepare_ssqr(tensors, device)
        return (lambda: ssqr_linear(x, prepared)), stored_bits(tensors) // 8

    return KernelCase(f"ssqr-{bits}bit-G{group_size}-{outlier_rate:.0%}", setup)


def hptq_cases() -> list[KernelCase]:
    """KernelCases from benchmarks/hptq_cases.py's `hptq_bench_cases` (one layer per shape)."""
    built: dict[tuple[int, int], dict] = {}

    def layer(k, n, device):
        if (k, n) not in built:
            built[(k, n)] = hptq_bench_cases([(k, n)], device)[0]
        return built[(k, n)]

    def fused(n, k, m, x, device):
        case = layer(k, n, device)
        return None if m > case["fused_max_m"] else ((lambda: case["fused"](x)), case["stored_bytes"])

    def decode_matmul(n, k, m, x, device):
        case = layer(k, n, device)
        return (lambda: case["decode_matmul"](x)), case["stored_bytes"]

    return [KernelCase("hptq-fused-gemv", fused), KernelCase("hptq-decode-matmul", decode_matmul)]


def registry() -> list[KernelCase]:
    cases = [ssqr_case(4, 0.01), ssqr_case(3, 0.01), ssqr_case(2, 0.01)]
    return cases + hptq_cases()


def time_us(fn: Callable[[], object]) -> float:
    """Median time of fn in microseconds, replayed from a CUDA graph."""
    from triton.testing import do_bench_cudagraph
    fn()  # compile and tune outside the graph
    torch.cuda.synchronize()
    return do_bench_cudagraph(fn, rep=100) * 1e3


def copy_bandwidth(device: torch.device) -> float:
    """Device-to-device copy bandwidth in bytes/s (read + write) of a 1 GiB buffer."""
    src = torch.empty(1 << 28, dtype=torch.float32, device=device)
    dst = torch.empty_like(src)
    return 2 * src.numel() * 4 / (time_us(lambda: dst.copy_(src)) * 1e-6)


def run(shapes: list[str], m_values: list[int], case_filter: str) -> dict:
    device = torch.device("cuda")
    torch.manual_seed(0)
    bandwidth = copy_bandwidth(device)
    cases = [c for c in registry() if case_filter in c.name]
    rows = []
    for shape in shapes:
        k, n = SHAPES[shape]
        weight = torch.randn(n, k, device=device, dtype=torch.bfloat16)
        for m in m_values:
            x = torch.randn(m, k, device=device, dtype=torch.bfloat16)
            bf16_us = time_us(lambda: torch.nn.functional.linear(x, weight))
            for case in cases:
                built = case.setup(n, k, m, x, device)
                if built is None:
                    continue
                fn, weight_bytes = built
                us = time_us(fn)
                moved = weight_bytes + 2 * (m * k + m * n)
                rows.append(dict(shape=shape, n=n, k=k, m=m, case=case.name, us=us,
                                 bf16_us=bf16_us, speedup=bf16_us / us,
                                 bandwidth_fraction=moved / (us * 1e-6) / bandwidth,
                                 bf16_bandwidth_fraction=(2 * n * k + 2 * (m * k + m * n))
                                 / (bf16_us * 1e-6) / bandwidth))
                print(f"{shape:>12} M={m:<5} {case.name:<22} {us:9.1f} us  bf16 {bf16_us:9.1f} us  "
                      f"x{rows[-1]['speedup']:.2f}  bw {rows[-1]['bandwidth_fraction']:.0%}", flush=True)
    import triton
    return dict(device=torch.cuda.get_device_name(device), torch=torch.__version__,
                triton=triton.__version__, python=platform.python_version(),
                date=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
                copy_bandwidth_GBps=bandwidth / 1e9, timing="do_bench_cudagraph median", rows=rows)


def to_markdown(result: dict) -> str:
    lines = [f"# Kernel benchmark: {result['device']}", "",
             f"{result['date']} · torch {result['torch']} · triton {result['triton']} · "
             f"copy bandwidth {result['copy_bandwidth_GBps']:.0f} GB/s · {result['timing']}", "",
             "| shape (K→N) | M | kernel | µs | bf16 µs | speedup | BW fraction | bf16 BW fraction |",
             "|---|---|---|---|---|---|---|---|"]
    for r in result["rows"]:
        lines.append(f"| {r['shape']} | {r['m']} | {r['case']} | {r['us']:.1f} | {r['bf16_us']:.1f} | "
                     f"{r['speedup']:.2f}x | {r['bandwidth_fraction']:.0%} | "
                     f"{r['bf16_bandwidth_fraction']:.0%} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--shapes", nargs="+", default=list(SHAPES), choices=list(SHAPES))
    parser.add_argument("--m", nargs="+", type=int, default=list(M_VALUES))
    parser.add_argument("--cases", default="", help="only cases whose name contains this")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        print("benchmarks/kernel_speed.py needs a CUDA GPU (none found); nothing measured.",
              file=sys.stderr)
        return 2
    result = run(args.shapes, args.m, args.cases)
    gpu = result["device"].replace(" ", "_").replace("/", "_")
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"kernels_{gpu}.json").write_text(json.dumps(result, indent=1))
    (args.out / f"kernels_{gpu}.md").write_text(to_markdown(result))
    print(f"wrote {args.out}/kernels_{gpu}.{{json,md}}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
