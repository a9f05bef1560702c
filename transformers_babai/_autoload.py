"""Registration of quant_method "babai" with transformers, without importing transformers early.

`install_import_hook()` registers at once when transformers' quantizer registry
(`transformers.quantizers.auto`) is already imported, and otherwise puts a one-shot finder on
sys.meta_path that registers right after that module executes. So `import transformers_babai` is
cheap (standard library only), works before or after `import transformers`, and the optional
startup hook (`python -m transformers_babai install-hook`: one .pth line in site-packages) makes
tools that never import us — `lm_eval --model hf` — load babai checkpoints too.
"""
from __future__ import annotations

import importlib.abc
import importlib.util
import sys
import sysconfig
from pathlib import Path

TARGET = "transformers.quantizers.auto"
PTH_NAME = "transformers_babai.pth"
PTH_LINE = ('import importlib.util as _u; _u.find_spec("transformers_babai") and __import__("transformers_babai")'
            "  # vllm-babai: register quant_method babai with transformers (python -m transformers_babai remove-hook)\n")


def register() -> None:
    """Register quant_method "babai" with transformers (config class and quantizer); idempotent."""
    auto = sys.modules.get(TARGET) or importlib.import_module(TARGET)

    from .config import BabaiConfig
    from .quantizer import BabaiHfQuantizer

    if "babai" not in auto.AUTO_QUANTIZATION_CONFIG_MAPPING:
        auto.register_quantization_config("babai")(BabaiConfig)
    if "babai" not in auto.AUTO_QUANTIZER_MAPPING:
        auto.register_quantizer("babai")(BabaiHfQuantizer)


class _RegisterAfterImport(importlib.abc.MetaPathFinder):
    """Finds transformers.quantizers.auto through the other finders and wraps its loader so that
    `register()` runs once the module has executed; removes itself on first use."""

    def find_spec(self, fullname, path, target=None):
        if fullname != TARGET:
            return None
        sys.meta_path.remove(self)
        spec = importlib.util.find_spec(fullname)
        if spec is None or spec.loader is None:
            return spec
        exec_module = spec.loader.exec_module

        def exec_and_register(module):
            exec_module(module)
            register()
        spec.loader.exec_module = exec_and_register
        return spec


def install_import_hook() -> None:
    """Register now if transformers' registry is loaded, else as soon as it is (idempotent)."""
    if TARGET in sys.modules:
        register()
    elif not any(isinstance(f, _RegisterAfterImport) for f in sys.meta_path):
        sys.meta_path.insert(0, _RegisterAfterImport())


def pth_path() -> Path:
    """Where the startup hook lives: this interpreter's site-packages."""
    return Path(sysconfig.get_paths()["purelib"]) / PTH_NAME
