"""transformers integration for babai checkpoints: `import transformers_babai`, then
`AutoModelForCausalLM.from_pretrained(CKPT)` serves each quantized linear with the project's kernels.

The sibling of the vLLM plugin (vllm_babai): both are thin adapters over babai_kernels (the on-disk
contract, the loading rules in layer_spec, the kernel chooser); neither imports the other, and this
one never imports vLLM. transformers has no plugin entry point for quantizers, so registration
happens on import (idempotent).
"""
from __future__ import annotations

from pathlib import Path

import torch

__all__ = ["BabaiConfig", "BabaiHfQuantizer", "BabaiLinear", "load_model", "register", "resident_bytes"]


def register() -> None:
    """Register quant_method "babai" with transformers (config class and quantizer); idempotent."""
    from transformers.quantizers import auto

    from .config import BabaiConfig
    from .quantizer import BabaiHfQuantizer

    if "babai" not in auto.AUTO_QUANTIZATION_CONFIG_MAPPING:
        auto.register_quantization_config("babai")(BabaiConfig)
    if "babai" not in auto.AUTO_QUANTIZER_MAPPING:
        auto.register_quantizer("babai")(BabaiHfQuantizer)


register()

from .config import BabaiConfig  # noqa: E402
from .linear import BabaiLinear  # noqa: E402
from .quantizer import BabaiHfQuantizer  # noqa: E402


def load_model(path: str | Path, device: str | torch.device = "cpu", dtype: torch.dtype = torch.bfloat16):
    """(model, tokenizer) of a checkpoint folder (babai or plain), eval mode, every tensor on `device`,
    computing in `dtype` (CPU: bfloat16 runs the project's C++ kernel; float32 the dense torch
    reference; CUDA: float16/bfloat16). Needs transformers only (no vLLM)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(str(path), dtype=dtype, device_map={"": str(torch.device(device))})
    return model.eval(), AutoTokenizer.from_pretrained(str(path))


def resident_bytes(model) -> tuple[int, int]:
    """(resident bytes, on-disk bytes) of the model's babai linears (biases excluded)."""
    layers = [m for m in model.modules() if isinstance(m, BabaiLinear)]
    return sum(m.resident_bytes() for m in layers), sum(m.stored_bytes for m in layers)
