"""Session fixtures for the embedded assets: built (or verified) once per test session in the cache."""
from __future__ import annotations

import pytest
import torch

torch.set_num_threads(min(2, torch.get_num_threads()))


@pytest.fixture(scope="session")
def smollm2_dir():
    """Folder of the bf16 SmolLM2-135M-Instruct model (built on first use, ~1 min)."""
    from babai_quantizer import assets

    return assets.model_dir()


@pytest.fixture(scope="session")
def austen_text() -> dict[str, str]:
    """The Austen text splits: {'calib': ..., 'eval': ...}."""
    from babai_quantizer import assets

    return {split: assets.text_path(split).read_text(encoding="utf-8") for split in ("calib", "eval")}


@pytest.fixture(scope="session", autouse=True)
def aot_bundle():
    """kernels/aot_sm90.zip — the GPU kernels compiled for sm_90 by this Triton (≥ 3.9), ~2.4 MB of
    cubins, gitignored — built once per checkout (benchmarks/aot_bundle.py) for the tests that read
    it: the AOT launcher's and the chooser's older-Triton rows."""
    from babai_kernels import aot

    if not aot.BUNDLE.is_file():
        from benchmarks.aot_bundle import main as build
        build([])
    return aot.BUNDLE
