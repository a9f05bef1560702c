"""Kernel configurations for SSQR: candidate lists, measurement on the GPU, a per-GPU cache.

Like `triton.autotune` keyed on (N, K, M bucket), but the choice is made before launch because a
config decides the split-K workspace. Under TRITON_INTERPRET (CPU) one small config is used. Results
are cached in memory and in ~/.cache/vllm-babai/ssqr_configs_v2_<gpu>[_aot].json (_aot: launched
from the AOT bundle, whose candidates are the configs it holds). During CUDA-graph
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

SMALL_M = 16   # M up to this runs with BLOCK_M = 16 (mma.sync); larger M with 32..128-row tiles
INTERPRET = dict(BLOCK_M=16, BLOCK_N=32, BLOCK_K=32, SPLIT_K=2, num_warps=4, num_stages=1)
SPLITS = (1, 2, 4, 8, 16)
# (BLOCK_M, BLOCK_N, BLOCK_K, num_warps, num_stages) per M range; BLOCK_K is clipped to G at launch.
TILES = {
    "small": ((16, 256, 128, 4, 3), (16, 256, 128, 8, 3), (16, 128, 128, 4, 3)),
    "medium": ((32, 128, 128, 4, 3), (64, 128, 64, 4, 3), (64, 256, 64, 8, 3)),
    "large": ((64, 128, 64, 4, 3), (128, 128, 64, 8, 3), (128, 256, 64, 8, 3)),
}
_cache: dict[str, dict] = {}
_loaded_for: set[str] = set()


def m_bucket(m: int) -> int:
    """Power of two ≥ m, capped at 1024 (the M part of the tuning key)."""
    return min(1 << max(0, math.ceil(math.log2(max(m, 1)))), 1024)


def m_range(m: int) -> str:
    """"small" (M ≤ 16), "medium" (≤ 64) or "large": which tile shapes are candidates."""
    return "small" if m <= SMALL_M else "medium" if m <= 64 else "large"


def default_split(programs: int, k_tiles: int, sms: int = 132) -> int:
    """Split-K that brings the grid to about two programs per SM (≤ 16, ≤ k_tiles)."""
    want = max(1, (2 * sms) // max(programs, 1))
    return max(s for s in SPLITS if s <= min(want, k_tiles))


def candidates(m: int, n: int, k: int) -> list[dict]:
    """Configs to try at (M, N, K); the first is the untuned default (split-K by grid fill)."""
    if triton_interpret():
        return [INTERPRET]
    configs = []
    for block_m, block_n, block_k, warps, stages in TILES[m_range(m)]:
        programs = math.ceil(n / block_n) * math.ceil(m / block_m)
        first = default_split(programs, max(1, k // block_k))
        splits = [first] + [s for s in SPLITS if s != first and s <= max(1, k // block_k)]
        if m_range(m) == "large":
            splits = [1]
        configs += [dict(BLOCK_M=block_m, BLOCK_N=block_n, BLOCK_K=block_k, SPLIT_K=s,
                         num_warps=warps, num_stages=stages) for s in splits]
    return configs


def _cache_file(device: torch.device) -> Path:
    from babai_kernels.aot import use_aot
    name = torch.cuda.get_device_name(device).replace(" ", "_").replace("/", "_")
    root = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "vllm-babai"
    return root / f"ssqr_configs_v2_{name}{'_aot' if use_aot(device) else ''}.json"


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


def choose_config(key: str, m: int, n: int, k: int, device: torch.device,
                  run: Callable[[dict], object]) -> dict:
    """The fastest candidate for `key` (measured once per GPU with triton.testing.do_bench).

    Launching from the AOT bundle (babai_kernels.aot), candidates the bundle lacks are skipped;
    ValueError when it has none of them."""
    from babai_kernels.aot import MissingVariant, use_aot
    configs = candidates(m, n, k)
    if device.type != "cuda":
        return configs[0]
    _load(device)
    key = ("aot:" if use_aot(device) else "") + key
    if key in _cache:
        return _cache[key]
    if torch.cuda.is_current_stream_capturing():
        return configs[0]
    from triton.testing import do_bench
    timings, missing = [], []
    for i, cfg in enumerate(configs):
        try:
            timings.append((do_bench(lambda: run(cfg), warmup=5, rep=20), i))
        except MissingVariant as e:
            missing.append(str(e))
    if not timings:
        raise ValueError(f"{key}: no candidate config can launch:\n  " + "\n  ".join(missing))
    _cache[key] = configs[min(timings)[1]]
    _save(device)
    return _cache[key]
