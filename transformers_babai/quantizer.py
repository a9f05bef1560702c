"""`BabaiHfQuantizer`: transformers' hook (HfQuantizer) for checkpoints with quant_method "babai".

    before loading : check the checkpoint's tensor names against the format (contract.quantized_modules:
                     the vLLM plugin's check, same errors), replace each quantized nn.Linear by a
                     BabaiLinear whose placeholders take the stored tensors
    transformers   : loads every tensor (quantized ones in their stored dtype), ties embeddings
    after loading  : each BabaiLinear validates its tensors (shard_layer), asks the chooser for a
                     kernel and keeps only that kernel's resident form

`save_pretrained` writes the checkpoint back unchanged: the quantized tensors are read again from the
files they were loaded from (the module no longer holds them), everything else from the model.
"""
from __future__ import annotations

import logging
from pathlib import Path

import torch
from transformers.quantizers.base import HfQuantizer

from babai_kernels.common import safetensors_names
from babai_kernels.contract import (FUSED_SIBLINGS, TENSOR_NAMES, check_skip_consistent, fused_layer,
                                    present_optional_tensors, quantized_modules)
from babai_kernels.layer_spec import FORMATS

from .linear import BabaiLinear

logger = logging.getLogger("vllm.babai")


class BabaiHfQuantizer(HfQuantizer):
    """Loads pre-quantized babai checkpoints (SSQR / HPTQ) onto the project's kernels."""

    requires_calibration = True          # refuses on-the-fly quantization (pre_quantized=False)

    def validate_environment(self, device_map=None, **kwargs):
        if isinstance(device_map, dict) and len({str(d) for d in device_map.values()}) > 1:
            raise ValueError(f"babai checkpoints load onto one device; device_map={device_map} spreads the model "
                             "over several (each layer's kernel is built for the device it loads on)")

    def update_dtype(self, dtype: torch.dtype) -> torch.dtype:
        return dtype

    def _process_model_before_weight_loading(self, model, checkpoint_files=None, dtype=None, **kwargs):
        if not checkpoint_files:
            raise ValueError("babai: from_pretrained needs the checkpoint's safetensors files (a state_dict "
                             "argument cannot carry a babai checkpoint)")
        self.folder = Path(checkpoint_files[0]).parent
        self.files = [Path(f) for f in checkpoint_files]
        checkpoint = self.quantization_config.checkpoint
        names = safetensors_names(self.folder)
        self.modules = quantized_modules(names, checkpoint, str(self.folder))
        self.optional = present_optional_tensors(names, self.modules, checkpoint)
        check_skip_consistent([n for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)],
                              checkpoint.modules_to_not_convert)
        self.act_dtype = dtype if isinstance(dtype, torch.dtype) else torch.get_default_dtype()
        for name in self.modules:
            try:
                linear = model.get_submodule(name)
            except AttributeError:
                linear = None
            if not isinstance(linear, torch.nn.Linear):
                raise ValueError(f"{self.folder}: quantized layer {name}: {type(model).__name__} has no linear "
                                 f"{name} (found {type(linear).__name__})")
            parent, _, leaf = name.rpartition(".")
            model.get_submodule(parent).add_module(leaf, BabaiLinear(
                name, checkpoint.format, linear.in_features, linear.out_features, linear.bias is not None,
                linear.weight.dtype, self.optional))
        return model

    def _process_model_after_weight_loading(self, model, **kwargs):
        checkpoint = self.quantization_config.checkpoint
        stored = resident = 0
        for members in fused_groups(self.modules):   # one group at a time: its tensors are copied once
            layers = [model.get_submodule(m) for m in members]
            specs = [layer.spec(checkpoint, self.act_dtype) for layer in layers]
            check_fused_siblings(members, specs)
            for layer, spec in zip(layers, specs):
                layer.adopt(spec)
                stored, resident = stored + layer.stored_bytes, resident + layer.resident_bytes()
        logger.info("babai: %d quantized linears, %d bytes resident for %d on disk (%.3fx)", len(self.modules),
                    resident, stored, resident / max(stored, 1))
        return model

    @property
    def is_trainable(self) -> bool:
        return False       # the kernels have no backward (BabaiLinear refuses one, naming the layer)

    @property
    def is_qat_trainable(self) -> bool:
        return False

    def is_serializable(self) -> bool:
        return True

    def get_state_dict_and_metadata(self, model):
        """The model's state dict plus each quantized layer's checkpoint tensors, read again from the
        files the model was loaded from (ValueError naming the file if it has gone)."""
        from safetensors import safe_open

        state = dict(model.state_dict())
        names = (*TENSOR_NAMES[self.quantization_config.checkpoint.format], *self.optional)
        wanted = {f"{m}.{n}" for m in self.modules for n in names}
        for f in self.files:
            if not f.is_file():
                raise ValueError(f"{f}: the checkpoint file this model was loaded from is gone; save_pretrained "
                                 "re-reads the quantized tensors from it")
            with safe_open(str(f), "pt") as fh:
                for key in wanted.intersection(fh.keys()):
                    state[key] = fh.get_tensor(key)
                    wanted.discard(key)
        if wanted:
            raise ValueError(f"{self.folder}: no longer holds {sorted(wanted)[:3]}, which the model was loaded from")
        return state, {}



def fused_groups(modules: list[str]) -> list[list[str]]:
    """The modules grouped as vLLM fuses them (q/k/v, gate/up; others alone), members in vLLM's order."""
    order = {leaf: i for group in FUSED_SIBLINGS for i, leaf in enumerate(group)}
    groups: dict[str, list[str]] = {}
    for name in modules:
        groups.setdefault(fused_layer(name), []).append(name)
    return [sorted(g, key=lambda m: order.get(m.rpartition(".")[2], 0)) for g in groups.values()]


def check_fused_siblings(members: list[str], specs: list) -> None:
    """The check a fusing reader makes (docs/format.md §2): SSQR siblings that vLLM fuses must share
    perm, bits and group size. transformers runs them one by one, but refuses such a checkpoint as
    the vLLM plugin does, with its message. HPTQ siblings keep their own scale and code table, but
    share the per-column steps (format version 2), as the vLLM plugin checks."""
    if len(specs) >= 2 and specs[0].format == "hptq":
        from babai_kernels.runtime import hptq_col_scale
        try:
            hptq_col_scale([s.parts[0] for s in specs])
        except ValueError as e:
            raise ValueError(f"{' + '.join(members)}: {e}") from None
    if len(specs) < 2 or specs[0].format != "ssqr":
        return
    try:
        FORMATS["ssqr"].fuse([s.parts[0] for s in specs])
    except ValueError as e:
        raise ValueError(f"{' + '.join(members)}: {e}") from None
