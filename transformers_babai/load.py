"""Loading a checkpoint folder into a transformers model (for babai-eval, benchmarks and the GPU check)."""
from __future__ import annotations

from pathlib import Path

import torch

from .linear import BabaiLinear


def load_model(path: str | Path, device: str | torch.device = "cpu", dtype: torch.dtype = torch.bfloat16):
    """(model, tokenizer) of a checkpoint folder (babai or plain), eval mode, every tensor on `device`,
    computing in `dtype` (CPU: bfloat16 runs the project's C++ kernel, float32 the dense torch
    reference; CUDA: float16/bfloat16 run the Triton kernels). Needs transformers only (no vLLM)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(str(path), dtype=dtype, device_map={"": str(torch.device(device))})
    return model.eval(), AutoTokenizer.from_pretrained(str(path))


def resident_bytes(model) -> tuple[int, int]:
    """(resident bytes, on-disk bytes) of the model's babai linears (biases excluded)."""
    layers = [m for m in model.modules() if isinstance(m, BabaiLinear)]
    return sum(m.resident_bytes() for m in layers), sum(m.stored_bytes for m in layers)
