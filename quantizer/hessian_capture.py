"""Layer-by-layer calibration plumbing: catch the decoder's inputs, accumulate Gram matrices.

GPTQ-style: the inputs to decoder layer 0 (hidden states + the keyword arguments the model
passes to every layer: attention mask, position embeddings, ...) are caught once; then each
layer is run on its own, with forward hooks on its linears accumulating

    H = Σ_t x_t x_tᵀ / n_tokens          (K, K) float32, x = the linear's input (quantized model)
    G = Σ_t x̂_t x_tᵀ / n_tokens          (K, K) float32, x̂ quantized-model input, x float-model input

A forward stops as soon as every hooked linear has seen its input (`StopForward`), so capturing
the q/k/v input costs one RMSNorm, not a whole layer.
"""
from __future__ import annotations

import torch
from torch import nn


class StopForward(Exception):
    """Raised by a hook to end a forward pass once everything needed has been captured."""


class GramAccumulator:
    """Token-weighted running mean of `aᵀb` over calibration tokens, in float32.

    `add(a, b)` takes (..., K) activations; rows of `a` and `b` are the same tokens.
    """

    def __init__(self):
        self.total: torch.Tensor | None = None
        self.tokens = 0
        self.symmetric = True

    def add(self, a: torch.Tensor, b: torch.Tensor | None = None) -> None:
        a2 = a.reshape(-1, a.shape[-1]).float()
        b2 = a2 if b is None else b.reshape(-1, b.shape[-1]).float()
        self.symmetric = self.symmetric and b is None
        n = a2.shape[0]
        if self.total is None:
            self.total = torch.zeros(a2.shape[1], b2.shape[1], dtype=torch.float32, device=a2.device)
        # running mean: total = (tokens·total + aᵀb) / (tokens + n)
        self.total.mul_(self.tokens / (self.tokens + n)).addmm_(a2.T, b2, alpha=1.0 / (self.tokens + n))
        self.tokens += n

    def result(self) -> torch.Tensor:
        """The mean; for H (b = a) exactly symmetrized, since float32 aᵀa is not exactly symmetric
        and Cholesky routines read only one triangle (GPTQ's and Babai's read opposite ones)."""
        if self.total is None:
            raise ValueError("GramAccumulator: no calibration tokens were seen")
        return (self.total + self.total.T) / 2 if self.symmetric else self.total


def _first_arg(args, kwargs):
    return args[0] if args else kwargs["hidden_states"]


def catch_layer_inputs(model: nn.Module, layers: nn.ModuleList, windows: torch.Tensor,
                       device: torch.device) -> tuple[list[torch.Tensor], dict]:
    """Run each calibration window up to decoder layer 0 and return what layer 0 receives.

    windows: (nsamples, seqlen) int64 token ids. Returns (hidden states, one (1, seqlen, hidden)
    float32 tensor per window on `device`; the keyword arguments of the first window's layer-0
    call, floating tensors cast to float32). Only the non-decoder parts of the model move to
    `device`, and they go back to where they were afterwards.
    """
    layers_home = [next(layer.parameters()).device for layer in layers]
    others = {name: p.device for name, p in model.named_parameters() if ".layers." not in f".{name}"}
    # move everything but the decoder layers
    saved_layers = list(layers)
    for i in range(len(layers)):
        layers[i] = nn.Identity()
    model.to(device)
    for i, layer in enumerate(saved_layers):
        layers[i] = layer

    hidden: list[torch.Tensor] = []
    caught: dict = {}

    def catcher(_module, args, kwargs):
        hidden.append(_first_arg(args, kwargs).detach().float())
        if not caught:
            caught.update({k: _to_float32(v) for k, v in kwargs.items() if k != "hidden_states"})
        raise StopForward

    handle = layers[0].register_forward_pre_hook(catcher, with_kwargs=True)
    try:
        with torch.no_grad():
            for window in windows:
                try:
                    model(window.unsqueeze(0).to(device), use_cache=False)
                except StopForward:
                    pass
    finally:
        handle.remove()
        for name, p in model.named_parameters():
            if name in others:
                p.data = p.data.to(others[name])
        for layer, home in zip(layers, layers_home):
            layer.to(home)
    caught.pop("past_key_values", None)
    caught["use_cache"] = False
    return hidden, caught


def _to_float32(value):
    if isinstance(value, torch.Tensor):
        return value.float() if value.is_floating_point() else value
    if isinstance(value, tuple):
        return tuple(_to_float32(v) for v in value)
    return value


def run_layer(layer: nn.Module, hidden: torch.Tensor, layer_kwargs: dict) -> torch.Tensor:
    """One decoder layer's output for one window; (1, seqlen, hidden) float32."""
    with torch.no_grad():
        out = layer(hidden, **layer_kwargs)
    return out[0] if isinstance(out, tuple) else out


def capture_inputs(layer: nn.Module, module_names: list[str], hidden: torch.Tensor,
                   layer_kwargs: dict) -> dict[str, torch.Tensor]:
    """Inputs (1, seqlen, K) float32 of the named linears of `layer` for one window.

    The forward stops once all of them have fired.
    """
    seen: dict[str, torch.Tensor] = {}
    handles = []

    def hook_for(name):
        def hook(_module, args):
            seen[name] = args[0].detach().float()
            if len(seen) == len(module_names):
                raise StopForward
        return hook

    for name in module_names:
        handles.append(layer.get_submodule(name).register_forward_pre_hook(hook_for(name)))
    try:
        run_layer(layer, hidden, layer_kwargs)
    except StopForward:
        pass
    finally:
        for h in handles:
            h.remove()
    missing = [n for n in module_names if n not in seen]
    if missing:
        raise ValueError(f"calibration forward never reached {missing}")
    return seen


def accumulate_grams(layer: nn.Module, float_layer: nn.Module | None, groups, inputs: list[torch.Tensor],
                     float_inputs: list[torch.Tensor] | None, layer_kwargs: dict) -> dict:
    """{first linear of each group: (H, G or None)} over all calibration windows.

    groups: tuples of linear names sharing an input; float_layer/float_inputs: the float model's
    layer and inputs for the cross Gram G (Qronos-style target), else None.
    """
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
