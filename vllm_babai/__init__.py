"""vLLM plugin for the `babai` quantization method (SSQR / HPTQ checkpoints).

`register()` is the `vllm.general_plugins` entry point; importing this package never imports vllm.
"""


def register() -> None:
    """Register the `babai` quantization config with vLLM (idempotent; runs in every vLLM process)."""
    from . import config  # noqa: F401  (the decorator registers on import)
