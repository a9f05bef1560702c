"""Lattice basis reduction before Babai for HPTQ (issue 16): real SmolLM2 layers + timing.

CAPTURE PART (the rest follows).
"""
from __future__ import annotations

import hashlib
import json
import os

import torch

from babai_quantizer import assets
from babai_quantizer.calibration import SEQUENTIAL_GROUPS, calibration_windows, decoder_layers, load_causal_lm
from babai_quantizer.hessian_capture import GramAccumulator, capture_inputs, catch_layer_inputs, run_layer

CACHE = assets.cache_dir() / "reduction-hessians"


def capture_hessians(depths: list[int], nsamples: int, seqlen: int, seed: int) -> dict:
    """{depth: {group's first linear: (H (K, K) float32, {linear: W (N, K) float32})}} from the float
    model run on the Austen calib split (cached under the asset cache, keyed by the arguments)."""
    key = hashlib.sha256(json.dumps([depths, nsamples, seqlen, seed]).encode()).hexdigest()[:16]
    path = CACHE / f"{key}.pt"
    if path.is_file():
        return torch.load(path)
    model, tokenizer = load_causal_lm(assets.model_dir())
    model.float()
    text = assets.text_path("calib").read_text(encoding="utf-8")
    windows = calibration_windows(tokenizer, text, nsamples, seqlen, seed)
    layers = decoder_layers(model)
    hidden, kwargs = catch_layer_inputs(model, layers, windows, torch.device("cpu"))
    out = {}
    for index in range(max(depths) + 1):
        layer = layers[index]
        if index in depths:
            names = [g[0] for g in SEQUENTIAL_GROUPS]
            acc = {n: GramAccumulator() for n in names}
            for x in hidden:
                for n, a in capture_inputs(layer, names, x, kwargs).items():
                    acc[n].add(a)
            out[index] = {g[0]: (acc[g[0]].result(), {n: layer.get_submodule(n).weight.data.float().clone()
                                                       for n in g}) for g in SEQUENTIAL_GROUPS}
        hidden = [run_layer(layer, x, kwargs) for x in hidden]
    CACHE.mkdir(parents=True, exist_ok=True)
    torch.save(out, path)
    return out


if __name__ == "__main__":
    torch.set_num_threads(1)
    import time
    t = time.time()
    hs = capture_hessians([0, 14, 29], 16, 512, 0)
    print({d: {k: tuple(v[0].shape) for k, v in g.items()} for d, g in hs.items()}, time.time() - t)
