"""`babai` QuantizationConfig: read from config.json `quantization_config` (docs/format.md §1).

vLLM picks it up from the checkpoint with or without `--quantization babai`.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from vllm.model_executor.layers.linear import LinearBase, UnquantizedLinearMethod
from vllm.model_executor.layers.quantization import register_quantization_config
from vllm.model_executor.layers.quantization.base_config import QuantizationConfig, QuantizeMethodBase

from babai_kernels.common import safetensors_names
from babai_kernels.contract import (BabaiCheckpointConfig, check_skip_consistent, fused_layer, matches_skip,
                                    present_optional_tensors, quantized_modules)


@register_quantization_config("babai")
class BabaiConfig(QuantizationConfig):
    """vLLM's view of the checkpoint's quantization_config (babai_kernels.contract.BabaiCheckpointConfig)."""

    def __init__(self, checkpoint: BabaiCheckpointConfig):
        super().__init__()
        self.checkpoint = checkpoint
        self.format: str = checkpoint.format
        self.modules_to_not_convert: list[str] = list(checkpoint.modules_to_not_convert)
        self.expected_layers: int | None = None   # babai vLLM layers in the checkpoint (maybe_update_config)
        self.optional_tensors: tuple[str, ...] = ()   # the format's optional tensors the checkpoint holds

    def __repr__(self) -> str:
        return f"BabaiConfig(format={self.format!r}, skip={self.modules_to_not_convert})"

    @classmethod
    def get_name(cls) -> str:
        return "babai"

    def get_supported_act_dtypes(self) -> list[torch.dtype]:
        """CPU: any float type (float32 runs the torch reference); CUDA: the 16-bit types the Triton
        kernels take (vLLM refuses --dtype float32 with this list rather than serve dense weights)."""
        from vllm.platforms import current_platform

        if current_platform.is_cuda_alike():
            return [torch.float16, torch.bfloat16]
        return [torch.float16, torch.bfloat16, torch.float32]

    @classmethod
    def get_min_capability(cls) -> int:
        return 80  # bf16 tl.dot in the Triton kernels (ignored on CPU)

    @staticmethod
    def get_config_filenames() -> list[str]:
        return []  # the dict lives in config.json

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> "BabaiConfig":
        return cls(BabaiCheckpointConfig.from_dict(config, "config.json"))

    @staticmethod
    def get_checkpoint_weight_mapper():
        """Keep every checkpoint tensor (the default mapper drops `*.g_idx`)."""
        from vllm.model_executor.models.utils import WeightsMapper

        return WeightsMapper()

    def maybe_update_config(self, model_name: str, hf_config=None, revision: str | None = None) -> None:
        """Check a local checkpoint's tensor names against the format before any weight is loaded
        (missing, unknown or skipped-but-quantized tensors fail here, naming layer and tensor), and
        count the vLLM layers they make (fused siblings are one) for the resident-bytes log line."""
        if Path(model_name).is_dir():
            names = safetensors_names(model_name)
            modules = quantized_modules(names, self.checkpoint, model_name)
            self.expected_layers = len({fused_layer(m) for m in modules})
            self.optional_tensors = present_optional_tensors(names, modules, self.checkpoint)

    def apply_vllm_mapper(self, hf_to_vllm_mapper) -> None:
        self.modules_to_not_convert = hf_to_vllm_mapper.apply_list(self.modules_to_not_convert)

    def checkpoint_modules(self, prefix: str) -> list[str]:
        """Checkpoint module names behind a vLLM layer: the siblings of a fused layer
        (`...qkv_proj` → `...q_proj`, `...k_proj`, `...v_proj`), else the layer itself."""
        parent, _, last = prefix.rpartition(".")
        siblings = self.packed_modules_mapping.get(last)
        if not siblings:
            return [prefix]
        return [f"{parent}.{s}" if parent else s for s in siblings]

    def is_skipped(self, prefix: str) -> bool:
        """Whether the layer stays unquantized (the contract's skip rule over modules_to_not_convert,
        after vLLM's name mapping); fused siblings must agree (the contract's check, naming the layer)."""
        modules = self.checkpoint_modules(prefix)
        try:
            check_skip_consistent(modules, self.modules_to_not_convert)
        except ValueError as e:
            raise ValueError(f"{prefix}: {e}") from None
        return matches_skip(modules[0], self.modules_to_not_convert)

    def get_quant_method(self, layer: torch.nn.Module, prefix: str) -> QuantizeMethodBase | None:
        if not isinstance(layer, LinearBase):
            return None  # embeddings, lm_head, attention, MoE stay unquantized
        if self.is_skipped(prefix):
            return UnquantizedLinearMethod()
        from .linear import LINEAR_METHODS

        return LINEAR_METHODS[self.format](self, prefix)
