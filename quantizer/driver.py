"""The layer-wise model quantizer: calibrate a causal LM decoder layer by decoder layer.

For each decoder layer (only that layer on the compute device):
  1. for each group of linears sharing an input, in forward order (q/k/v → o → gate/up → down
     when `true_sequential`, else all at once): run the layer on the calibration inputs with
     the already-quantized weights in place and accumulate H = XᵀX/n (and, in float-target
     mode, G = X̂ᵀX/n against the float layer run on the float inputs);
  2. quantize every linear of the group from its H (siblings share it) with the format's
     quantize function (formats/registry.py) and put the dequantized weight into the layer;
  3. run the quantized layer to produce the next layer's inputs.
"""
from __future__ import annotations

import copy
import time
from dataclasses import dataclass, field

import torch
from torch import nn
from tqdm.auto import tqdm

from babai_kernels.contract import ROW_PARALLEL, check_skip_consistent, matches_skip, row_parallel_parts
from babai_quantizer.calibration import SEQUENTIAL_GROUPS, check_finite, decoder_layers, linear_names
from babai_quantizer.formats.registry import FORMAT_QUANTIZERS
from babai_quantizer.formats.result import FormatResult
from babai_quantizer.hessian_capture import accumulate_grams, catch_layer_inputs, run_layer
from babai_quantizer.options import QuantizeOptions


@dataclass
class QuantizedLinear:
    """One quantized linear: its checkpoint tensors (names without the module prefix), the
    dequantized weight (N, K) float32 in original column order, and its report entry."""

    tensors: dict[str, torch.Tensor]
    weight: torch.Tensor
    report: dict


@dataclass
class QuantizedModel:
    """The driver's result; `model` holds the dequantized weights in place, in the model's dtype
    (rounded when that is 16-bit; `linears[name].weight` holds them exactly, float32)."""

    model: nn.Module
    linears: dict[str, QuantizedLinear] = field(default_factory=dict)
    seconds: float = 0.0

    def report(self) -> dict:
        """quant_report.json: per linear entries and model totals."""
        layers = {name: q.report for name, q in self.linears.items()}
        weights = sum(r["rows"] * r["cols"] for r in layers.values())
        bits = sum(r["effective_bits"] * r["rows"] * r["cols"] for r in layers.values())
        return {
            "layers": layers,
            "totals": {
                "quantized_linears": len(layers),
                "quantized_weights": weights,
                "effective_bits": bits / weights if weights else None,
                "seconds": self.seconds,
                "clipped_rows": sum(r["clipped_rows"] for r in layers.values()),
                "bound_holds_where_unclipped": all(r["bound_holds"] is not False for r in layers.values()),
            },
        }


def quantize_model(model: nn.Module, windows: torch.Tensor, options: QuantizeOptions,
                   progress: bool = True) -> QuantizedModel:
    """Quantize every linear of every decoder layer of `model` in place (dequantized weights),
    except those `options.skip` matches (babai_kernels.contract.matches_skip).

    windows: (nsamples, seqlen) int64 calibration token ids.
    """
    options.validate()
    layers = decoder_layers(model)
    check_skip_consistent(linear_names(model), options.skip)
    check_finite(model)
    device = torch.device(options.device)
    start = time.perf_counter()
    result = QuantizedModel(model)
    inputs, layer_kwargs = catch_layer_inputs(model, layers, windows, device)
    float_inputs = [x.clone() for x in inputs] if options.float_target else None
    passes = [[g] for g in SEQUENTIAL_GROUPS] if options.true_sequential else [list(SEQUENTIAL_GROUPS)]
    for index in tqdm(range(len(layers)), desc="layers", disable=not progress):
        layer = layers[index]
        home, dtype = next(layer.parameters()).device, next(layer.parameters()).dtype
        layer.to(device=device, dtype=torch.float32)
        float_layer = copy.deepcopy(layer) if options.float_target else None
        prefix = f"model.layers.{index}."
        for groups in passes:
            grams = accumulate_grams(layer, float_layer, groups, inputs, float_inputs, layer_kwargs)
            for group in groups:
                for name in group:
                    full = prefix + name
                    if matches_skip(full, options.skip):
                        continue
                    linear = layer.get_submodule(name)
                    h, g = grams[group[0]]
                    q = quantize_linear(linear.weight.data, h, g, options, full,
                                        row_parallel=name.rpartition(".")[2] in ROW_PARALLEL)
                    if linear.bias is not None:
                        q.tensors["bias"] = linear.bias.data.to(dtype).cpu()
                    result.linears[full] = q
                    linear.weight.data = q.weight.to(device)   # exact dequantized values, float32
        inputs = [run_layer(layer, x, layer_kwargs) for x in inputs]
        if float_layer is not None:
            float_inputs = [run_layer(float_layer, x, layer_kwargs) for x in float_inputs]
        layer.to(device=home, dtype=dtype)
    result.seconds = time.perf_counter() - start
    return result


def quantize_linear(weight: torch.Tensor, H: torch.Tensor, G: torch.Tensor | None,
                    options: QuantizeOptions, name: str, row_parallel: bool) -> QuantizedLinear:
    """Quantize one (N, K) weight from its (K, K) Gram matrix H (and cross Gram G) per `options`."""
    W = weight.detach().float()
    if not torch.isfinite(W).all():
        raise ValueError(f"non-finite values (NaN/inf) in weight tensor {name}.weight")
    blocks = row_parallel_parts(W.shape[1], options.sweep_group_size, options.row_parallel_blocks) \
        if row_parallel else 1
    start = time.perf_counter()
    r = FORMAT_QUANTIZERS[options.format](W, H, G, options, blocks)
    report = linear_report(r, blocks, time.perf_counter() - start)
    return QuantizedLinear(dict(r.tensors), r.q_dequant.detach().float().cpu(), report)


def linear_report(r: FormatResult, blocks: int, seconds: float) -> dict:
    """One linear's quant_report.json entry."""
    rows, cols = r.q_dequant.shape
    bounded = None if r.bound is None else ~r.bound.isnan()     # SSQR: rows stored clipped have no bound
    trace_d = r.search.get("trace_D")
    report = {
        "rows": rows, "cols": cols,
        "error": float(r.error.sum()),
        "bound": None if r.bound is None else float(r.bound[bounded].sum()),
        "bound_holds": None if r.bound is None or r.clipped else bool(
            (r.error[bounded] <= r.bound[bounded] * (1 + 1e-6)).all()),
        "clipped_rows": rows if r.clipped else len(r.search.get("clipped_rows", ())),
        "trace_D": None if trace_d is None else float(trace_d),
        "effective_bits": float(r.effective_bits),
        "outlier_rate": None if r.outlier_rate is None else float(r.outlier_rate.float().mean()),
        "row_parallel_blocks": blocks,
        "seconds": seconds,
        "clipped": r.clipped,
    }
    return report
