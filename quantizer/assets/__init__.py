"""Embedded default assets, fetched, built and cached by the project.

- `model`: SmolLM2-135M-Instruct as a bf16 Hugging Face folder (see smollm2.py).
- `text`: Jane Austen's novels split into `calib` and `eval` text files (see austen.py).

The cache root is $VLLM_BABAI_CACHE (default ~/.cache/vllm-babai). Every access verifies the sha256
manifest and rebuilds a missing or corrupt asset (cache.py). `python -m babai_quantizer.assets` (re)makes them.
"""
from __future__ import annotations

from pathlib import Path

from .austen import build_text, split_file
from .cache import Asset, AssetError, cache_dir, ensure, verify_folder
from .smollm2 import build_model

ASSETS = {
    "model": Asset("smollm2-135m-instruct", build_model, "SmolLM2-135M-Instruct, bf16 Hugging Face folder"),
    "text": Asset("austen", build_text, "Jane Austen novels: calib.txt and eval.txt"),
}

__all__ = ["ASSETS", "AssetError", "build", "cache_dir", "model_dir", "text_path", "verify"]


def _asset(key: str) -> Asset:
    if key not in ASSETS:
        raise ValueError(f"asset: {key!r} not in {sorted(ASSETS)}")
    return ASSETS[key]


def build(key: str, force: bool = False) -> Path:
    """Ensure asset `key` ('model' | 'text') is built and intact (rebuilt if `force`); return its folder."""
    return ensure(_asset(key), cache_dir(), force=force)


def model_dir() -> Path:
    """Folder of the bf16 SmolLM2-135M-Instruct model (built on first use)."""
    return build("model")


def text_path(split: str) -> Path:
    """Path of the Austen text split 'calib' or 'eval' (built on first use)."""
    name = split_file(split)
    return build("text") / name


def verify(key: str | None = None) -> dict[str, list[str]]:
    """Problems found in the cached assets (all, or only `key`), without rebuilding; [] means intact."""
    keys = [key] if key is not None else list(ASSETS)
    return {k: verify_folder(cache_dir() / _asset(k).name) for k in keys}
