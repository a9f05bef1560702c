"""The layer-wise model quantizer: calibrate a causal LM decoder layer by decoder layer.

For each decoder layer (only that layer on the compute device):
  1. for each group of linears sharing an input, in forward order (q/k/v → o → gate/up → down
     when `true_sequential`, else all at once): run the layer on the calibration inputs with
     the already-quantized weights in place and accumulate H = XᵀX/n (and, in float-target
     mode, G = X̂ᵀX/n against the float layer run on the float inputs);
  2. quantize every linear of the group from its H (siblings share it) and put the
     dequantized weight into the layer;
  3. run the quantized layer to produce the next layer's inputs.
"""
from __future__ import annotations

import copy
import fnmatch
import time
from dataclasses import dataclass, field, asdict
from pathlib import Path

import torch
from torch import nn
from tqdm.auto import tqdm

from babai_kernels.common import stored_bits
from babai_quantizer.hessian_capture import GramAccumulator, capture_inputs, catch_layer_inputs, run_layer

SUPPORTED_ARCHITECTURES = ("LlamaForCausalLM", "MistralForCausalLM", "Qwen2ForCausalLM", "Qwen3ForCausalLM")
FORMATS = ("ssqr", "hptq", "hrtn", "gptq", "rtn")
ORDERINGS = ("act", "min-pivot", "identity")
ALGORITHMS = ("gptq", "babai")
# Linears of a Llama-family decoder layer, grouped by shared input, in forward order.
SEQUENTIAL_GROUPS = (
    ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"),
    ("self_attn.o_proj",),
    ("mlp.gate_proj", "mlp.up_proj"),
    ("mlp.down_proj",),
)
ROW_PARALLEL = ("self_attn.o_proj", "mlp.down_proj")


@dataclass
class QuantizeOptions:
    """Everything that decides the quantized weights (the CLI's options, minus paths)."""

    format: str = "ssqr"
    bits: int = 4
    target_bits: float | None = None       # hptq/hrtn
    group_size: int = 64
    outlier_rate: float = 0.01              # ssqr
    ordering: str = "act"
    algorithm: str = "gptq"                 # gptq format: GPTQ sweep, or Babai back-to-front (same codes)
    damping: float = 0.01
    float_target: bool = False
    true_sequential: bool = True
    row_parallel_blocks: int = 8
    skip: tuple[str, ...] = ()              # fnmatch patterns of linear names kept in 16 bit
    device: str = "cpu"
    dtype: str = "float32"                  # dtype of the quantization sweep

    def validate(self) -> None:
        if self.format not in FORMATS:
            raise ValueError(f"format: {self.format!r} not in {list(FORMATS)}")
        if self.ordering not in ORDERINGS:
            raise ValueError(f"ordering: {self.ordering!r} not in {list(ORDERINGS)}")
        if self.algorithm not in ALGORITHMS:
            raise ValueError(f"algorithm: {self.algorithm!r} not in {list(ALGORITHMS)}")
        if self.algorithm == "babai" and self.format != "gptq":
            raise ValueError(f"algorithm: 'babai' needs format 'gptq' (its clipped grid and scales), "
                             f"got format {self.format!r}")
        if self.format in ("hptq", "hrtn"):
            if self.target_bits is None or not self.target_bits > 0:
                raise ValueError(f"target_bits: {self.format} needs a positive target, got {self.target_bits!r}")
        elif self.bits not in (2, 3, 4, 8):
            raise ValueError(f"bits: {self.bits!r} not in [2, 3, 4, 8]")
        if self.group_size <= 0:
            raise ValueError(f"group_size: must be positive, got {self.group_size}")
        if not 0 <= self.outlier_rate < 1:
            raise ValueError(f"outlier_rate: must be in [0, 1), got {self.outlier_rate}")
        if self.damping < 0:
            raise ValueError(f"damping: must be ≥ 0, got {self.damping}")
        if self.row_parallel_blocks < 1:
            raise ValueError(f"row_parallel_blocks: must be ≥ 1, got {self.row_parallel_blocks}")
        if self.dtype not in ("float32", "float64"):
            raise ValueError(f"dtype: {self.dtype!r} not in ['float32', 'float64']")


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


def row_parallel_blocks_for(cols: int, group_size: int, requested: int) -> int:
    """Largest P ≤ requested with K % P == 0, (K/P) % group_size == 0 and (K/P) % 32 == 0."""
    for p in range(requested, 0, -1):
        if cols % p == 0 and (cols // p) % group_size == 0 and (cols // p) % 32 == 0:
            return p
    return 1


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


def check_finite(model: nn.Module) -> None:
    """ValueError naming the first parameter that holds NaN or ±inf."""
    for name, p in model.named_parameters():
        if p.is_floating_point() and not torch.isfinite(p).all():
            raise ValueError(f"non-finite values (NaN/inf) in weight tensor {name}")


def is_skipped(name: str, skip: tuple[str, ...]) -> bool:
    return any(fnmatch.fnmatch(name, pat) or name.endswith(pat) for pat in skip)


def quantize_model(model: nn.Module, windows: torch.Tensor, options: QuantizeOptions,
                   progress: bool = True) -> QuantizedModel:
    """Quantize every linear of every decoder layer of `model` in place (dequantized weights).

    windows: (nsamples, seqlen) int64 calibration token ids.
    """
    options.validate()
    layers = decoder_layers(model)
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
            grams = _accumulate(layer, float_layer, groups, inputs, float_inputs, layer_kwargs)
            for group in groups:
                for name in group:
                    full = prefix + name
                    if is_skipped(full, options.skip):
                        continue
                    linear = layer.get_submodule(name)
                    h, g = grams[group[0]]
                    q = quantize_linear(linear.weight.data, h, g, options, full,
                                        row_parallel=name in ROW_PARALLEL)
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


def _accumulate(layer, float_layer, groups, inputs, float_inputs, layer_kwargs):
    """{first linear of each group: (H, G or None)} over all calibration windows."""
    names = [g[0] for g in groups]
    h = {n: GramAccumulator() for n in names}
    g = {n: GramAccumulator() for n in names} if float_layer is not None else None
    for i, x in enumerate(inputs):
        seen = capture_inputs(layer, names, x, layer_kwargs)
        float_seen = capture_inputs(float_layer, names, float_inputs[i], layer_kwargs) if g else None
        for n in names:
            h[n].add(seen[n])
            if g:
                g[n].add(seen[n], float_seen[n])
    return {n: (h[n].result(), g[n].result() if g else None) for n in names}


def quantize_linear(weight: torch.Tensor, H: torch.Tensor, G: torch.Tensor | None,
                    options: QuantizeOptions, name: str, row_parallel: bool) -> QuantizedLinear:
    """Quantize one (N, K) weight from its (K, K) Gram matrix H (and cross Gram G) per `options`."""
    from babai_quantizer import formats
    from babai_quantizer.gptq_export import pack_gptq

    W = weight.detach().float()
    if not torch.isfinite(W).all():
        raise ValueError(f"non-finite values (NaN/inf) in weight tensor {name}.weight")
    rows, cols = W.shape
    dtype = getattr(torch, options.dtype)
    group = options.group_size if options.format in ("ssqr", "gptq", "rtn") else 32
    blocks = row_parallel_blocks_for(cols, group, options.row_parallel_blocks) if row_parallel else 1
    start = time.perf_counter()
    trace_d = None
    if options.format == "ssqr":
        r = formats.quantize_ssqr(W, H, bits=options.bits, group_size=options.group_size,
                                  outlier_rate=options.outlier_rate, ordering=options.ordering,
                                  damping=options.damping, row_parallel_blocks=blocks, G_cross=G,
                                  dtype=dtype, device=W.device)
    elif options.format == "hptq":
        r = formats.quantize_hptq(W, H, target_bits=options.target_bits, ordering=options.ordering,
                                  damping=options.damping, row_parallel_blocks=blocks, G_cross=G,
                                  dtype=dtype, device=W.device)
    elif options.format == "hrtn":
        r = formats.quantize_hrtn(W, H, target_bits=options.target_bits, row_parallel_blocks=blocks,
                                  damping=options.damping)
    if options.format in ("ssqr", "hptq", "hrtn"):
        tensors, q, error, bound, bits = r.tensors, r.q_dequant, r.error, r.bound, r.effective_bits
        outliers = r.outlier_rate
        trace_d = r.search.get("trace_D")
        clipped = False
    else:
        lr = _clipped_layer(W, H, G, options, dtype)
        trace_d = lr.trace_D
        tensors = pack_gptq(lr.codes, lr.scales, bits=options.bits)
        q, error, bound, outliers, clipped = lr.q, lr.error, lr.bound, None, True
        bits = stored_bits(tensors) / (rows * cols)
    bounded = None if bound is None else ~bound.isnan()      # SSQR: rows stored clipped have no bound
    report = {
        "rows": rows, "cols": cols,
        "error": float(error.sum()),
        "bound": None if bound is None else float(bound[bounded].sum()),
        "bound_holds": None if bound is None or clipped else bool(
            (error[bounded] <= bound[bounded] * (1 + 1e-6)).all()),
        "clipped_rows": rows if clipped else len(r.search.get("clipped_rows", ())),
        "trace_D": None if trace_d is None else float(trace_d),
        "effective_bits": float(bits),
        "outlier_rate": None if outliers is None else float(outliers.float().mean()),
        "row_parallel_blocks": blocks,
        "seconds": time.perf_counter() - start,
        "clipped": clipped,
    }
    if options.algorithm == "babai":
        report["gptq_code_mismatches"] = lr.gptq_mismatches
    return QuantizedLinear(dict(tensors), q.detach().float().cpu(), report)


def _clipped_layer(W, H, G, options: QuantizeOptions, dtype: torch.dtype):
    """GPTQ (act-order sweep, static groups in original column order), the same by Babai
    back-to-front (options.algorithm), or RTN on the same clipped grid and MSE scales; RTN's error
    is measured on the damped H and it has no bound/tr(D)."""
    from babai_quantizer import lattice
    from babai_quantizer.babai_layer import quantize_layer_babai

    if options.algorithm == "babai":
        return quantize_layer_babai(W, H, bits=options.bits, group_size=options.group_size,
                                    ordering=options.ordering, damping=options.damping, G_cross=G,
                                    dtype=dtype, device=W.device)
    if options.format == "gptq":
        return lattice.quantize_layer(W, H, bits=options.bits, group_size=options.group_size, grid="clip",
                                      ordering=options.ordering, groups_in="original", damping=options.damping,
                                      G_cross=G, dtype=dtype, device=W.device)
    scales = lattice.group_scales(W, options.bits, options.group_size)
    S = scales.repeat_interleave(options.group_size, dim=1)
    codes, q, outliers = lattice.rtn_quantize(W, S, lattice.make_grid("clip", options.bits))
    Hd, _ = lattice.damp(H.double(), options.damping)
    return lattice.LayerResult(codes=codes, q=q.float(), outlier_mask=outliers, perm=torch.arange(W.shape[1]),
                               scales=scales, group_index=torch.arange(W.shape[1]) // options.group_size,
                               D=None, trace_D=None, error=lattice.achieved_error(W, q, Hd), bound=None,
                               damping_used=options.damping)


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


def quantization_config(options: QuantizeOptions) -> dict:
    """config.json `quantization_config` for the options' format (docs/format.md, or GPTQ layout)."""
    from babai_quantizer.gptq_export import gptq_quantization_config

    skip = ["lm_head", *options.skip]
    if options.format in ("gptq", "rtn"):
        return gptq_quantization_config(options.bits, options.group_size, skip)
    ssqr = options.format == "ssqr"
    return {
        "quant_method": "babai", "version": 1, "format": "ssqr" if ssqr else "hptq",
        "bits": options.bits if ssqr else None,
        "group_size": options.group_size if ssqr else None,
        "outlier_rate": options.outlier_rate if ssqr else None,
        "target_bits": None if ssqr else options.target_bits,
        "max_code_len": None if ssqr else 12, "escape_bits": None if ssqr else 16,
        "ordering": options.ordering, "damping": options.damping,
        "float_target": options.float_target, "modules_to_not_convert": skip,
    }


def write_checkpoint(result: QuantizedModel, options: QuantizeOptions, dest: str | Path,
                     source: str | Path, overwrite: bool = False, extra_report: dict | None = None) -> Path:
    """Write the quantized model as a checkpoint folder at `dest` (atomic; see quantizer/checkpoint.py)."""
    from babai_quantizer.checkpoint import save_quantized_checkpoint
    from babai_quantizer.gptq_export import save_gptq_checkpoint

    save = save_gptq_checkpoint if options.format in ("gptq", "rtn") else save_quantized_checkpoint
    report = {**result.report(), "options": asdict(options), **(extra_report or {})}
    hf_config = result.model.config.to_dict()
    hf_config.pop("quantization_config", None)
    return save(dest, hf_config=hf_config, tensors=checkpoint_tensors(result),
                                     quantization_config=quantization_config(options),
                                     copy_from=source, report=report, overwrite=overwrite)
