"""Write the driver's result as a checkpoint folder: tensor names, quantization config, naming."""
from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

import torch

from babai_kernels.contract import ALWAYS_SKIPPED, BabaiCheckpointConfig, GPTQCheckpointConfig
from babai_quantizer.checkpoint import write_checkpoint
from babai_quantizer.driver import QuantizedModel
from babai_quantizer.options import TARGET_BITS_FORMATS, QuantizeOptions


def checkpoint_tensors(result: QuantizedModel) -> dict[str, torch.Tensor]:
    """Every tensor of the quantized model by checkpoint name (docs/format.md): quantized
    linears as `<prefix>.<tensor>`, everything else under its Hugging Face name."""
    out: dict[str, torch.Tensor] = {}
    quantized = {f"{name}.weight" for name in result.linears} | {f"{name}.bias" for name in result.linears}
    for name, t in result.model.state_dict().items():
        if name not in quantized:
            out[name] = t
    for name, q in result.linears.items():
        for key, t in q.tensors.items():
            out[f"{name}.{key}"] = t
    if getattr(result.model.config, "tie_word_embeddings", False):
        out.pop("lm_head.weight", None)
    return out


def checkpoint_config(options: QuantizeOptions) -> BabaiCheckpointConfig | GPTQCheckpointConfig:
    """The checkpoint's quantization config for the options' format (hptq and hrtn share the
    HPTQ layout; gptq and rtn the GPTQ layout)."""
    skip = (*ALWAYS_SKIPPED, *options.skip)
    if options.format in ("gptq", "rtn"):
        return GPTQCheckpointConfig(options.bits, options.group_size, skip)
    informational = dict(ordering=options.ordering, damping=options.damping, float_target=options.float_target,
                         modules_to_not_convert=skip)
    if options.format in TARGET_BITS_FORMATS:
        return BabaiCheckpointConfig.hptq(options.target_bits, **informational)
    return BabaiCheckpointConfig("ssqr", bits=options.bits, group_size=options.group_size,
                                 outlier_rate=options.outlier_rate, **informational)


def default_output(model: Path, options: QuantizeOptions) -> Path:
    """./checkpoints/<model>-<format>-<size>."""
    size = f"{options.target_bits}b" if options.format in TARGET_BITS_FORMATS \
        else f"w{options.bits}g{options.group_size}"
    return Path("checkpoints") / f"{model.name}-{options.format}-{size}"


def save_quantized(result: QuantizedModel, options: QuantizeOptions, dest: str | Path, source: str | Path,
                   overwrite: bool = False, extra_report: dict | None = None) -> Path:
    """Write the quantized model as a checkpoint folder at `dest` (atomic; quantizer/checkpoint.py),
    with tokenizer files from `source` and quant_report.json."""
    report = {**result.report(), "options": asdict(options), **(extra_report or {})}
    hf_config = result.model.config.to_dict()
    hf_config.pop("quantization_config", None)
    return write_checkpoint(dest, hf_config=hf_config, tensors=checkpoint_tensors(result),
                            config=checkpoint_config(options), copy_from=source, report=report, overwrite=overwrite)
