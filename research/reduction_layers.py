"""Hessian capture and per-layer measurement for research.reduction (issue 16).

`capture_hessians` runs the float SmolLM2 model on the Austen calib split and keeps, at the chosen
depths, each sequential group's input Hessian H = Σ xxᵀ/n and its linears' weights (cached under the
asset cache). `reductions` reduces one group's basis per method:window config; `layer_rows` compares
plain HPTQ with each reduction on one linear at each bit target (error at equal coded bits, the same
sweep at plain's scale, code entropy, largest code, times); `big_layer` times the whole search and
its parts on one synthetic K×K layer. The CLI and the report are in research/reduction.py.
"""
from __future__ import annotations

import time

import torch

from babai_kernels.hptq.pack import coded_bits
from babai_quantizer import assets
from babai_quantizer.calibration import SEQUENTIAL_GROUPS, calibration_windows, decoder_layers, load_causal_lm
from babai_quantizer.formats import quantize_hptq
from babai_quantizer.formats.hptq import HptqSweep
from babai_quantizer.formats.layer import prepare_layer
from babai_quantizer.hessian_capture import GramAccumulator, capture_inputs, catch_layer_inputs, run_layer
from babai_quantizer.lattice import achieved_error, reduce_basis
from benchmarks.cache_keys import stable_hash
from benchmarks.lattice_sweep import synthetic_layer

CACHE = assets.cache_dir() / "reduction-hessians"
TOL = 0.005          # bits/weight: both searches land this close to the target
SLICES = 8


def capture_hessians(depths: list[int], nsamples: int, seqlen: int, seed: int) -> dict:
    """{depth: {group's first linear: (H (K, K) float32, {linear: W (N, K) float32})}} from the float
    model on the Austen calib split (cached under the asset cache, keyed by the arguments)."""
    key = stable_hash([depths, nsamples, seqlen, seed])
    path = CACHE / f"{key}.pt"
    if path.is_file():
        return torch.load(path)
    model, tokenizer = load_causal_lm(assets.model_dir())
    model.float()
    text = assets.text_path("calib").read_text(encoding="utf-8")
    layers = decoder_layers(model)
    hidden, kwargs = catch_layer_inputs(model, layers, calibration_windows(tokenizer, text, nsamples, seqlen, seed),
                                        torch.device("cpu"))
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


def parse_config(text: str) -> tuple[str, int | None]:
    method, _, window = text.partition(":")
    return method, None if window in ("", "full") else int(window)


def entropy(z: torch.Tensor) -> float:
    """Empirical entropy of the code histogram, bits per weight."""
    p = torch.unique(z, return_counts=True)[1].double() / z.numel()
    return float(-(p * p.log2()).sum())


def profile(r: torch.Tensor) -> list[float]:
    """Mean log₂ of the Gram–Schmidt lengths over SLICES equal slices of the Babai order."""
    return [round(float(c.log2().mean()), 3) for c in r.chunk(SLICES)]


def codes_of(result) -> torch.Tensor:
    """z (N, K) int64 of an HPTQ result: q = float32(s·z) with |z| < 2^23, so round(q/s) is exact."""
    return torch.round(result.q_dequant.double() / result.search["scale"]).to(torch.int64)


def reductions(H: torch.Tensor, W: torch.Tensor, configs: list[str]) -> tuple[dict, dict]:
    """Per config: the group's reduction (shared by its linears) and its JSON summary."""
    _, prep = prepare_layer(W, H, ordering="act", damping=0.01, row_parallel_blocks=1, G_cross=None,
                            dtype=torch.float32, device=None)
    reds, summary = {}, {}
    for config in configs:
        method, window = parse_config(config)
        red = reduce_basis(prep.H, prep.perm, method, window=window)
        reds[config] = red
        summary[config] = {**red.stats(), "profile_before": profile(red.r_before),
                           "profile_after": profile(red.r_after)}
    return reds, summary


def layer_rows(W, H, reds: dict, targets: list[float]) -> list[dict]:
    """Plain vs each reduction at each target for one linear."""
    N, K = W.shape
    Wd, prep = prepare_layer(W, H, ordering="act", damping=0.01, row_parallel_blocks=1, G_cross=None,
                             dtype=torch.float32, device=None)
    chunk = None
    rows = []
    for target in targets:
        plain = quantize_hptq(W, H, target_bits=target, tol=TOL)
        chunk = plain.search["chunk_cols"]
        z_plain, s_plain, e_plain = codes_of(plain), plain.search["scale"], float(plain.error.sum())
        for config, red in reds.items():
            method, window = parse_config(config)
            r = quantize_hptq(W, H, target_bits=target, tol=TOL, reduce=method, reduce_window=window)
            z_eq, q_eq = HptqSweep.build(Wd, prep, red).codes_at(s_plain)
            z_red, ratio = codes_of(r), float(r.error.sum()) / e_plain
            rows.append({
                "target": target, "config": config,
                "bits_plain": plain.effective_bits, "bits_reduced": r.effective_bits,
                "error_ratio": ratio,
                "error_ratio_adj": ratio * 4.0 ** (r.effective_bits - plain.effective_bits),
                "scale_ratio": r.search["scale"] / s_plain,
                "entropy_plain": entropy(z_plain), "entropy_reduced": entropy(z_red),
                "equal_scale_error_ratio": float(achieved_error(Wd, q_eq, prep.H).sum()) / e_plain,
                "equal_scale_extra_bits": (coded_bits(z_eq, chunk) - coded_bits(z_plain, chunk)) / (N * K),
                "equal_scale_changed_codes": float((z_eq != z_plain).double().mean()),
                "max_abs_z_plain": int(z_plain.abs().max()), "max_abs_z_reduced": int(z_red.abs().max()),
                "reduction_seconds": r.search["reduction"]["seconds"],
                "seconds_plain": plain.search["seconds"], "seconds_reduced": r.search["seconds"],
                "error_le_bound": bool((r.error <= r.bound).all()),
            })
    return rows


def timed(fn):
    t = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t


def big_layer(K: int, target: float) -> dict:
    """Time per layer for a K×K layer (random correlated activations): the whole HPTQ search plain and
    with windowed LLL (default window), and its parts: layer setup, reduction, H' setup, one sweep."""
    W, H = synthetic_layer(K, K, "cpu")
    out = {"shape": [K, K], "hessian": "benchmarks.lattice_sweep.synthetic_layer", "target_bits": target}
    for reduce in ("none", "lll"):
        r = quantize_hptq(W, H, target_bits=target, tol=TOL, reduce=reduce)
        out[reduce] = {"seconds": r.search["seconds"], "steps": r.search["steps"], "bits": r.effective_bits,
                       "error": float(r.error.sum()), "scale": r.search["scale"],
                       **({"reduction": r.search["reduction"]} if reduce != "none" else {})}
    out["lll"]["error_ratio_adj"] = (out["lll"]["error"] / out["none"]["error"]
                                     * 4.0 ** (out["lll"]["bits"] - out["none"]["bits"]))
    (Wd, prep), t_setup = timed(lambda: prepare_layer(W, H, ordering="act", damping=0.01, row_parallel_blocks=1,
                                                      G_cross=None, dtype=torch.float32, device=None))
    red, t_reduce = timed(lambda: reduce_basis(prep.H, prep.perm, "lll"))
    reduced, t_build = timed(lambda: HptqSweep.build(Wd, prep, red))
    scale = out["none"]["scale"]
    _, t_sweep_plain = timed(lambda: HptqSweep.build(Wd, prep, None).codes_at(scale))
    _, t_sweep_reduced = timed(lambda: reduced.codes_at(scale))
    out["parts_seconds"] = {"layer_setup": t_setup, "reduce_basis": t_reduce, "reduced_hessian_setup": t_build,
                            "sweep_plain": t_sweep_plain, "sweep_reduced": t_sweep_reduced}
    return out
