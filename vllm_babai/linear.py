"""Linear methods for babai SSQR and HPTQ layers (vLLM loader v2 with deferred parameters).

create_weights registers one empty DeferredParameter per checkpoint tensor name (of the tensor's
stored dtype); the loader stores the full tensors there; process_weights_after_loading slices this
rank's part (docs/format.md TP rules, through babai_kernels.layer_spec.shard_layer), fuses siblings
and hands the spec to the kernel chooser (babai_kernels.chooser), whose winner builds only the
resident form it needs; apply runs that kernel.
"""
from __future__ import annotations

import torch
from vllm.model_executor.layers.linear import (
    LinearMethodBase,
    ReplicatedLinear,
    RowParallelLinear,
    register_weight_loader_v2_supported_method,
)

from babai_kernels.chooser import choose_kernel, logger, register_kernel
from babai_kernels.contract import tensor_dtype
from babai_kernels.layer_spec import FORMATS, Format, Sibling, shard_layer

from .mp_kernel import VllmMixedPrecision
from .params import DeferredParameter, load_replicated

register_kernel(VllmMixedPrecision)


class ResidentTally:
    """Resident bytes of this process's babai linears; logged once all `expected` of them are
    loaded (BabaiConfig.expected_layers, counted from the checkpoint's tensor names)."""

    layers = 0
    bytes = 0
    weights = 0

    @classmethod
    def add(cls, resident_bytes: int, weights: int, expected: int | None) -> None:
        cls.layers, cls.bytes, cls.weights = cls.layers + 1, cls.bytes + resident_bytes, cls.weights + weights
        if cls.layers == expected:
            logger.info("babai resident bytes: %d over %d weights (%.3f bits/weight)", cls.bytes, cls.weights,
                        8 * cls.bytes / cls.weights)


class BabaiLinearMethod(LinearMethodBase):
    """Common logic; subclasses fix the format (vLLM opts in to loader v2 by class name)."""

    fmt: Format

    def __init__(self, quant_config, prefix: str):
        self.quant_config = quant_config
        self.prefix = prefix

    def create_weights(self, layer: torch.nn.Module, input_size_per_partition: int,
                       output_partition_sizes: list[int], input_size: int, output_size: int,
                       params_dtype: torch.dtype, **extra_weight_attrs):
        loader = extra_weight_attrs["weight_loader"]
        if isinstance(layer, ReplicatedLinear):
            loader = load_replicated
        modules = self.quant_config.checkpoint_modules(self.prefix)
        if len(modules) != len(output_partition_sizes):
            raise ValueError(f"{self.prefix}: vLLM fuses {len(output_partition_sizes)} checkpoint modules into "
                             f"this layer, but the model's packed_modules_mapping names {modules}")
        layer.babai_modules = modules
        layer.babai_input_size = input_size
        layer.babai_act_dtype = params_dtype
        layer.babai_tensor_names = (*self.fmt.tensor_names, *self.quant_config.optional_tensors)
        for name in layer.babai_tensor_names:
            layer.register_parameter(name, DeferredParameter(name=name, layer=layer, weight_loader=loader,
                                                             dtype=getattr(torch, tensor_dtype(self.fmt.name, name))))

    def process_weights_after_loading(self, layer: torch.nn.Module) -> None:
        params = {name: getattr(layer, name) for name in layer.babai_tensor_names}
        siblings = []
        for i, (module, n_local) in enumerate(zip(layer.babai_modules, layer.output_partition_sizes)):
            pieces = {name: p.pieces[i] for name, p in params.items() if i in p.pieces}
            first = next(iter(pieces.values()), None)  # all tensors of a module share rows
            siblings.append(Sibling(module, {name: pc.tensor for name, pc in pieces.items()},
                                    first.rows if first else None, first.full_rows if first else n_local))
        row_parallel = isinstance(layer, RowParallelLinear)
        col_part = (layer.tp_rank, layer.tp_size) if row_parallel else None
        device = params[self.fmt.tensor_names[0]].device  # placeholders live on the target device
        spec = shard_layer(self.fmt, siblings, layer.babai_input_size, col_part, device,
                           self.quant_config.checkpoint, layer.babai_act_dtype)
        for name in layer.babai_tensor_names:
            delattr(layer, name)
        layer.babai_kernel = choose_kernel(spec, self.prefix)
        layer.babai_shape = spec.shape
        ResidentTally.add(layer.babai_kernel.resident_bytes(), spec.shape[0] * spec.shape[1],
                          self.quant_config.expected_layers)

    def apply(self, layer: torch.nn.Module, x: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
        n, k = layer.babai_shape
        y = layer.babai_kernel.apply(x.reshape(-1, k), bias)
        return y.reshape(*x.shape[:-1], n)


@register_weight_loader_v2_supported_method
class SSQRLinearMethod(BabaiLinearMethod):
    """SSQR: group-quantized codes + sparse outliers; fused siblings become one matrix."""

    fmt = FORMATS["ssqr"]


@register_weight_loader_v2_supported_method
class HPTQLinearMethod(BabaiLinearMethod):
    """HPTQ: Huffman-coded codes; fused siblings stay separate parts (own scale and code table)."""

    fmt = FORMATS["hptq"]


LINEAR_METHODS = {"ssqr": SSQRLinearMethod, "hptq": HPTQLinearMethod}
