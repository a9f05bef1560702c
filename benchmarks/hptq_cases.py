"""HPTQ benchmark cases for benchmarks/kernel_speed.py: random HPTQ layers near a target bits/weight.

z is a rounded Laplace sample whose width is bisected (on a row sample, with the same chunk
width) so the layer's honest stored size is close to `target_bits` per weight; the layer is
then encoded and prepared on the device.
"""
from __future__ import annotations

import math

import torch

from babai_kernels.common import stored_bits, use_triton
from babai_kernels.hptq.gemv import fused_max_m, hptq_decode, hptq_gemv
from babai_kernels.hptq.pack import choose_chunk_cols, coded_bits, encode_hptq
from babai_kernels.hptq.prepare import prepare_hptq

SAMPLE_ROWS = 64


def laplace_codes(shape, width: float, gen: torch.Generator, device) -> torch.Tensor:
    u = torch.rand(shape, generator=gen, device=device, dtype=torch.float32) - 0.5
    return (-width * torch.sign(u) * torch.log1p(-2 * u.abs())).round().to(torch.int64)


def width_for(k: int, chunk_cols: int, target_bits: float, gen, device) -> float:
    """Laplace width whose codes cost about `target_bits` per weight (bisection in log width)."""
    lo, hi = math.log(0.05), math.log(5000.0)
    seed = int(torch.randint(0, 2**31, (1,), generator=gen, device=device))
    for _ in range(30):
        mid = (lo + hi) / 2
        sample_gen = torch.Generator(device=device).manual_seed(seed)
        z = laplace_codes((SAMPLE_ROWS, k), math.exp(mid), sample_gen, device)
        if coded_bits(z, chunk_cols) / z.numel() > target_bits:
            hi = mid
        else:
            lo = mid
    return math.exp((lo + hi) / 2)


def hptq_bench_cases(shapes: list[tuple[int, int]], device: torch.device | str = "cuda",
                     target_bits: float = 3.125, seed: int = 0) -> list[dict]:
    """One case per (in_features K, out_features N) in `shapes` ("K→N" as in the issue).

    Each case: name, in_features, out_features, bits_per_weight (honest, stored), gpu_bits_per_weight
    (lane words + table + lane bases and offsets held on the device), stored_bytes,
    fused(x) → y for x (M, K) with M ≤ fused_max_m (fused decode-GEMV), decode_matmul(x) → y
    (decode to x.dtype, then torch matmul), weight_bf16 (N, K) dequantized (for the dense
    baseline and correctness checks). y = x · Wqᵀ in x.dtype.
    """
    device = torch.device(device)
    if not use_triton(device):
        raise ValueError(f"device: HPTQ Triton kernels cannot run on {device} (need CUDA or "
                         "TRITON_INTERPRET=1 on CPU)")
    gen = torch.Generator(device=device).manual_seed(seed)
    cases = []
    for k, n in shapes:
        chunk_cols = choose_chunk_cols(k)
        width = width_for(k, chunk_cols, target_bits, gen, device)
        tensors = encode_hptq(laplace_codes((n, k), width, gen, device), 1.0 / width, chunk_cols)
        prepared = prepare_hptq(tensors, k, device)
        bits = stored_bits(tensors)
        cases.append({
            "name": f"hptq{target_bits:g} {k}->{n}", "in_features": k, "out_features": n,
            "bits_per_weight": bits / (n * k), "stored_bytes": bits // 8,
            "gpu_bits_per_weight": sum(t.numel() * t.element_size() * 8 for t in (
                prepared.words, prepared.lut, prepared.bases, prepared.offsets)) / (n * k),
            "fused": lambda x, p=prepared: hptq_gemv(x, p), "fused_max_m": fused_max_m(prepared.padded_k),
            "decode_matmul": lambda x, p=prepared: x @ hptq_decode(p, x.dtype).T,
            "weight_bf16": hptq_decode(prepared, torch.bfloat16),
        })
    return cases
