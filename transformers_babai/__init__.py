"""transformers integration for babai checkpoints: `import transformers_babai`, then
`AutoModelForCausalLM.from_pretrained(CKPT)` serves each quantized linear with the project's kernels.

The sibling of the vLLM plugin (vllm_babai): both are thin adapters over babai_kernels (the on-disk
contract, the loading rules in layer_spec, the kernel chooser); neither imports the other, and this
one never imports vLLM. transformers has no plugin entry point for quantizers, so the import
registers quant_method "babai" (at once, or when transformers' quantizer registry is imported:
importing this package costs nothing until then); `python -m transformers_babai install-hook` does
the import at interpreter startup for tools that never import it (lm-eval's hf backend).

    BabaiConfig        the quantization_config (validated by babai_kernels.contract)
    BabaiHfQuantizer   transformers' hook: replaces quantized linears, builds their kernels
    BabaiLinear        a quantized linear holding only its kernel's resident tensors
    load_model(path, device, dtype) -> (model, tokenizer); resident_bytes(model) -> (resident, disk)
"""
from __future__ import annotations

import importlib

from ._autoload import install_import_hook, register

__all__ = ["BabaiConfig", "BabaiHfQuantizer", "BabaiLinear", "load_model", "register", "resident_bytes"]
_LAZY = {"BabaiConfig": "config", "BabaiHfQuantizer": "quantizer", "BabaiLinear": "linear", "load_model": "load",
         "resident_bytes": "load"}

install_import_hook()


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
