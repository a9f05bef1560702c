"""The model and the calibration data: loading a supported causal LM, its decoder layers and the
order their linears are quantized in, and calibration windows from a text."""
from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from babai_kernels import common

SUPPORTED_ARCHITECTURES = ("LlamaForCausalLM", "MistralForCausalLM", "Qwen2ForCausalLM", "Qwen3ForCausalLM")
# Linears of a Llama-family decoder layer, grouped by shared input, in forward order.
SEQUENTIAL_GROUPS = (
    ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"),
    ("self_attn.o_proj",),
    ("mlp.gate_proj", "mlp.up_proj"),
    ("mlp.down_proj",),
)


def load_causal_lm(path: str | Path):
    """(model, tokenizer) from a Hugging Face folder in its own dtype, on CPU, eval mode.

    ValueError for a missing folder or an unsupported architecture (named).
    """
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    path = Path(path)
    if not (path / "config.json").is_file():
        raise ValueError(f"model: {path} is not a Hugging Face model folder (no config.json)")
    config = AutoConfig.from_pretrained(path)
    archs = list(getattr(config, "architectures", None) or [])
    if not archs or archs[0] not in SUPPORTED_ARCHITECTURES:
        raise ValueError(f"model: unsupported architecture {archs or config.model_type!r} in {path}; "
                         f"supported: {list(SUPPORTED_ARCHITECTURES)}")
    model = AutoModelForCausalLM.from_pretrained(path, dtype="auto").eval()
    return model, AutoTokenizer.from_pretrained(path)


def decoder_layers(model: nn.Module) -> nn.ModuleList:
    """The decoder layers of a supported causal LM; ValueError naming an unsupported one."""
    archs = list(getattr(model.config, "architectures", None) or [type(model).__name__])
    if type(model).__name__ not in SUPPORTED_ARCHITECTURES:
        raise ValueError(f"unsupported architecture {type(model).__name__} (config architectures {archs}); "
                         f"supported: {list(SUPPORTED_ARCHITECTURES)}")
    layers = model.model.layers
    kinds = {getattr(layer.self_attn, "sliding_window", None) for layer in layers}
    if len(kinds) > 1:
        raise ValueError(f"{type(model).__name__}: mixed sliding-window/full attention layers are not supported")
    return layers


def linear_names(model: nn.Module) -> list[str]:
    """Full names of the linears the driver quantizes, in order (`model.layers.<i>.<name>`)."""
    return [f"model.layers.{i}.{name}" for i in range(len(decoder_layers(model)))
            for group in SEQUENTIAL_GROUPS for name in group]


def check_finite(model: nn.Module) -> None:
    """ValueError naming the first parameter that holds NaN or ±inf, and where (babai_kernels.common)."""
    for name, p in model.named_parameters():
        if p.is_floating_point():
            common.check_finite(f"weight tensor {name}", p.detach())


def calibration_windows(tokenizer, text: str, nsamples: int, seqlen: int, seed: int) -> torch.Tensor:
    """(nsamples, seqlen) int64: windows at random offsets (seeded) of the tokenized text.

    ValueError if the text is shorter than one window.
    """
    if nsamples < 1 or seqlen < 2:
        raise ValueError(f"nsamples/seqlen: need nsamples ≥ 1 and seqlen ≥ 2, got {nsamples}, {seqlen}")
    ids = torch.tensor(tokenizer(text, add_special_tokens=False)["input_ids"], dtype=torch.long)
    if ids.numel() < seqlen:
        raise ValueError(f"calibration text: {ids.numel()} tokens, shorter than one window of seqlen={seqlen}")
    gen = torch.Generator().manual_seed(seed)
    starts = torch.randint(0, ids.numel() - seqlen + 1, (nsamples,), generator=gen)
    return torch.stack([ids[s:s + seqlen] for s in starts.tolist()])
