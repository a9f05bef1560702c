"""The `babai` quantization config as transformers sees it (`config.json` → `quantization_config`).

A thin wrapper: the dict is kept exactly as the checkpoint stores it (so `save_pretrained` writes
it back unchanged), and is validated by the one owner of the schema, babai_kernels.contract.
"""
from __future__ import annotations

from transformers.utils.quantization_config import QuantizationConfigMixin

from babai_kernels.contract import BabaiCheckpointConfig

SOURCE = "config.json"   # how errors name the config (as the vLLM plugin does)


class BabaiConfig(QuantizationConfigMixin):
    """`quantization_config` of a babai checkpoint (docs/format.md §1); ValueError naming the key
    and value on anything the contract rejects. Only for loading: babai checkpoints are made
    offline by `babai-quantize`, never quantized on the fly."""

    def __init__(self, quant_method: str = "babai", **fields):
        BabaiCheckpointConfig.from_dict({"quant_method": quant_method, **fields}, SOURCE)
        self.quant_method = quant_method
        for key, value in fields.items():
            setattr(self, key, value)

    @property
    def checkpoint(self) -> BabaiCheckpointConfig:
        """The validated contract object."""
        return BabaiCheckpointConfig.from_dict(self.to_dict(), SOURCE)
