"""Kernel configurations for SSQR: candidate lists, measurement on the GPU, a per-GPU cache.

Like `triton.autotune` keyed on (N, K, M bucket), but the choice is made before launch because a
config decides the output buffer (split-K and the companion outlier kernel accumulate into a
zeroed float32 buffer). Under TRITON_INTERPRET (CPU) the first, small candidate is used. Results
are cached in memory and in ~/.cache/vllm-babai/ssqr_configs_<gpu>.json. During CUDA-graph
capture nothing is measured (the first candidate is used unless a measured choice is cached).
"""
from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Callable

import torch

from babai_kernels.common import triton_interpret

GEMV_MAX_M = 8  # M up to this uses the GEMV path, larger M the tensor-core GEMM path
INTERPRET_GEMV = dict(BLOCK_M=4, BLOCK_N=32, BLOCK_K=32, SPLIT_K=2, FUSE_OUTLIERS=True,
                      num_warps=4, num_stages=1)
INTERPRET_GEMM = dict(BLOCK_M=16, BLOCK_N=32, BLOCK_K=32, SPLIT_K=1, FUSE_OUTLIERS=True,
                      num_warps=4, num_stages=1)
_cache: dict[str, dict] = {}
_loaded_for: set[str] = set()


def m_bucket(m: int) -> int:
    """Power of two ≥ m, capped at 1024 (the M part of the tuning key)."""
    return min(1 << max(0, math.ceil(math.log2(max(m, 1)))), 1024)


def candidates(path: str, m: int) -> list[dict]:
    """Configs to try for `path` ("gemv" | "gemm") at M = m; the first is the untuned default."""
    if triton_interpret():
        return [INTERPRET_GEMV if path == "gemv" else INTERPRET_GEMM]
    configs = []
    if path == "gemv":
        block_m = m_bucket(m)
        for block_n, block_k in ((64, 128), (32, 128), (64, 64), (128, 64), (32, 256), (128, 128)):
            if block_m * block_n * block_k > 32768:
                continue
            for split_k in (1, 2, 4, 8):
                for fuse in (True, False):
                    configs.append(dict(BLOCK_M=block_m, BLOCK_N=block_n, BLOCK_K=block_k,
                                        SPLIT_K=split_k, FUSE_OUTLIERS=fuse, num_warps=4,
                                        num_stages=2))
        return configs
    for block_m, block_n, block_k, warps, stages in (
            (64, 64, 64, 4, 3), (16, 64, 64, 4, 3), (32, 64, 64, 4, 3), (32, 128, 64, 4, 3),
            (64, 128, 64, 4, 3), (128, 64, 64, 4, 4), (128, 128, 64, 8, 3), (64, 128, 128, 8, 3),
            (128, 256, 64, 8, 3)):
        if block_m > max(16, m_bucket(m)):
            continue
        for fuse in (True, False):
            configs.append(dict(BLOCK_M=block_m, BLOCK_N=block_n, BLOCK_K=block_k, SPLIT_K=1,
                                FUSE_OUTLIERS=fuse, num_warps=warps, num_stages=stages))
    return configs


def _cache_file(device: torch.device) -> Path:
    name = torch.cuda.get_device_name(device).replace(" ", "_").replace("/", "_")
    root = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "vllm-babai"
    return root / f"ssqr_configs_{name}.json"


def _load(device: torch.device) -> None:
    path = _cache_file(device)
    if str(path) in _loaded_for:
        return
    _loaded_for.add(str(path))
    try:
        _cache.update(json.loads(path.read_text()))
    except (OSError, ValueError):
        pass


def _save(device: torch.device) -> None:
    path = _cache_file(device)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(_cache, indent=1, sort_keys=True))
    except OSError:
        pass


def choose_config(path: str, key: str, m: int, device: torch.device,
                  run: Callable[[dict], object]) -> dict:
    """The fastest candidate for `key` (measured once per GPU with triton.testing.do_bench)."""
    configs = candidates(path, m)
    if device.type != "cuda":
        return configs[0]
    _load(device)
    if key in _cache:
        return _cache[key]
    if torch.cuda.is_current_stream_capturing():
        return configs[0]
    from triton.testing import do_bench
    timings = [(do_bench(lambda: run(cfg), warmup=5, rep=20), i) for i, cfg in enumerate(configs)]
    _cache[key] = configs[min(timings)[1]]
    _save(device)
    return _cache[key]
