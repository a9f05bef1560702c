"""Cross-layer bit allocation for HPTQ/HRTN (issue 23): one Lagrange multiplier for the whole model.

Sensitivity model (`--allocation fisher`). A layer's output error e = X(w − q) raises the calibration
loss by ≈ ½ Σ F·e² (second order, diagonal Fisher of the layer's outputs: F = E[(∂loss/∂y)²], from one
backward pass of the float model over the calibration windows). With the driver's H = XᵀX/n the
layer's cost is ½ F̄_ℓ err_ℓ, err_ℓ = Σ_rows (w − q)ᵀH(w − q), F̄_ℓ the mean of F over its outputs.
At high rate with steps s·α_j, Babai's expected error is err_ℓ = N_ℓ K_ℓ c_ℓ s_ℓ²/12,
c_ℓ = mean_j D_jj α_j² (D: LDL diagonal in the Babai order), and the coded bits are b_ℓ ≈ h_ℓ − log2 s_ℓ.
Minimizing Σ ½ F̄_ℓ err_ℓ at fixed total bits Σ n_ℓ b_ℓ (one multiplier λ: equal marginal loss per bit)
gives F̄_ℓ c_ℓ s_ℓ² equal over the layers, i.e.

    b_ℓ = b̄ + v_ℓ − mean_n(v),     v_ℓ = log2 s_u,ℓ + ½ log2(F̄_ℓ c_ℓ)

with s_u,ℓ the layer's step at the uniform target b̄, estimated from the empirical entropy of the
codes round(W/(α s)) (float model's Hessians; constants common to all layers cancel). Targets are
clamped to [b̄ − span, b̄ + span] ∩ [MIN_BITS, 6] (span: options.allocation_span, default 1.5) and
shifted together until the weight-weighted mean is b̄ again; each layer's search then meets its own
target (±0.01), so the model's stored bits stay at --target-bits.

The plan (a `BitPlan`, passed as `target_bits`) finds a layer by its float32 weight's bytes: the
driver hands quantize_hptq/quantize_hrtn the original weight of each linear.
"""
from __future__ import annotations

import dataclasses
import hashlib
import math

import torch
from torch import nn
from tqdm.auto import tqdm

from babai_quantizer.calibration import SEQUENTIAL_GROUPS, decoder_layers
from babai_quantizer.hessian_capture import accumulate_grams, catch_layer_inputs, run_layer
from babai_quantizer.options import QuantizeOptions, parse_col_steps

MIN_BITS = 1.6                    # below, the Huffman code's 1 bit per symbol floor dominates


def weight_key(W: torch.Tensor) -> str:
    """Digest of a weight (N, K) as float32 bytes: how the plan finds a layer."""
    return hashlib.sha1(W.detach().to(torch.float32).contiguous().cpu().numpy().tobytes()).hexdigest()


@dataclasses.dataclass(frozen=True)
class BitPlan:
    """Per-linear bit targets. targets: {linear name: bits}; keys: {weight_key: linear name};
    mean: the model average they keep; stats: {linear name: {fisher, c, log2_step, v}}."""

    targets: dict
    keys: dict
    mean: float
    stats: dict

    def target(self, W: torch.Tensor) -> float:
        name = self.keys.get(weight_key(W))
        if name is None:
            raise ValueError("target_bits: the bit plan has no entry for this weight (plan and model differ)")
        return self.targets[name]

    def __float__(self) -> float:
        return float(self.mean)

    def report(self) -> dict:
        return {"method": "fisher", "mean": self.mean,
                "layers": {n: {"target_bits": b, **self.stats[n]} for n, b in self.targets.items()}}


def resolve_target(target_bits, W: torch.Tensor) -> float:
    """A layer's bit target: the number itself, or the plan's entry for W."""
    return target_bits.target(W) if isinstance(target_bits, BitPlan) else target_bits


def output_fisher(model: nn.Module, windows: torch.Tensor, names: list[str]) -> dict[str, float]:
    """{linear name: mean over its outputs of Σ_tokens (∂loss/∂y)²} over the calibration windows, one
    forward and backward per window of the model (float32 copy of the activations' graph only)."""
    sums = {n: 0.0 for n in names}
    handles = []

    def hook(name, n_out):
        def on_output(module, args, out):
            out.register_hook(lambda g: sums.__setitem__(name, sums[name] + float(g.float().square().sum()) / n_out))
        return on_output

    for n in names:
        linear = model.get_submodule(n)
        handles.append(linear.register_forward_hook(hook(n, linear.out_features)))
    emb = model.get_input_embeddings()
    handles.append(emb.register_forward_hook(lambda m, a, out: out.requires_grad_()))
    try:
        with torch.enable_grad():
            for w in windows:
                model(input_ids=w[None], labels=w[None]).loss.backward()
    finally:
        for h in handles:
            h.remove()
        model.zero_grad(set_to_none=True)
    return sums


def entropy_step(W: torch.Tensor, alpha: torch.Tensor, target: float, side_bits: float, iters: int = 6) -> float:
    """Step s with empirical entropy of round(W/(α s)) + side_bits/(N·K) ≈ target (bits/weight).
    Newton on log2 s (entropy falls ≈ 1 bit per doubling of s)."""
    V = W.double() / alpha.double()[None, :]
    s = float(V.std()) * 2.0 ** (2.05 - target)      # a Gaussian's entropy at this step ≈ target
    for _ in range(iters):
        z = torch.round(V / s).to(torch.int64).reshape(-1)
        counts = torch.bincount(z - z.min()).double()
        p = counts[counts > 0] / z.numel()
        bits = float(-(p * p.log2()).sum()) + side_bits / W.numel()
        if abs(bits - target) < 1e-3:
            break
        s *= 2.0 ** (bits - target)
    return s


def allocate(v: dict[str, float], n: dict[str, int], mean: float, span: float = 1.5) -> dict[str, float]:
    """b = clamp(mean + v − m + δ, within ±span of mean) with δ bisected so that Σ n·b / Σ n = mean."""
    lo, hi = max(mean - span, MIN_BITS), min(mean + span, 6.0)
    total = sum(n.values())
    m = sum(v[k] * n[k] for k in v) / total

    def bits(delta):
        return {k: min(max(mean + v[k] - m + delta, lo), hi) for k in v}

    a, b = -10.0, 10.0
    for _ in range(80):
        mid = (a + b) / 2
        got = sum(x * n[k] for k, x in bits(mid).items()) / total
        a, b = (mid, b) if got < mean else (a, mid)
    return bits((a + b) / 2)


def plan_bits(model: nn.Module, windows: torch.Tensor, options: QuantizeOptions, skip=lambda name: False,
              progress: bool = True) -> BitPlan:
    """The plan for `options.target_bits` over the model's decoder linears (module docstring)."""
    from babai_quantizer.formats.hptq import column_steps
    from babai_quantizer.formats.layer import prepare_layer

    layers = decoder_layers(model)
    names = [f"model.layers.{i}.{n}" for i in range(len(layers)) for g in SEQUENTIAL_GROUPS for n in g]
    names = [n for n in names if not skip(n)]
    dtype0 = next(model.parameters()).dtype
    model.float()
    try:
        fisher = output_fisher(model, windows, names)
        device = torch.device(options.device)
        inputs, layer_kwargs = catch_layer_inputs(model, layers, windows, device)
        power = parse_col_steps(options.col_steps)
        v, count, stats, keys = {}, {}, {}, {}
        with torch.no_grad():
            for index in tqdm(range(len(layers)), desc="plan", disable=not progress):
                layer = layers[index]
                grams = accumulate_grams(layer, None, SEQUENTIAL_GROUPS, inputs, None, layer_kwargs)
                for group in SEQUENTIAL_GROUPS:
                    for name in group:
                        full = f"model.layers.{index}.{name}"
                        if full not in fisher:
                            continue
                        W = layer.get_submodule(name).weight.data.float()
                        _, prep = prepare_layer(W, grams[group[0]][0], ordering=options.ordering,
                                                damping=options.damping, row_parallel_blocks=1, G_cross=None,
                                                dtype=torch.float64, device=device)
                        alpha = (column_steps(prep.D, prep.perm, prep.dead, power) if power
                                 else torch.ones(W.shape[1], dtype=torch.float16))
                        c = float((prep.D.double().cpu() * alpha.double()[prep.perm.cpu()].square()).mean())
                        s = entropy_step(W, alpha.float(), float(options.target_bits), 16 * W.shape[1] if power else 0)
                        v[full] = math.log2(s) + 0.5 * math.log2(max(fisher[full], 1e-30) * c)
                        count[full] = W.numel()
                        keys[weight_key(W)] = full
                        stats[full] = {"fisher": fisher[full], "c": c, "log2_step": math.log2(s), "v": v[full]}
                inputs = [run_layer(layer, x, layer_kwargs) for x in inputs]
    finally:
        model.to(dtype0)
    targets = allocate(v, count, float(options.target_bits), options.allocation_span)
    return BitPlan(targets, keys, float(options.target_bits), stats)


def quantize_allocated(model: nn.Module, windows: torch.Tensor, options: QuantizeOptions,
                       progress: bool = True):
    """driver.quantize_model with options.allocation applied: (QuantizedModel, BitPlan.report() or None).
    'fisher' plans the per-linear targets first (plan_bits) and passes the plan as target_bits."""
    from babai_kernels.contract import matches_skip
    from babai_quantizer.driver import quantize_model

    options.validate()
    if options.allocation == "uniform":
        return quantize_model(model, windows, options, progress=progress), None
    plan = plan_bits(model, windows, options, skip=lambda n: matches_skip(n, options.skip), progress=progress)
    result = quantize_model(model, windows, dataclasses.replace(options, target_bits=plan), progress=progress)
    return result, plan.report()
