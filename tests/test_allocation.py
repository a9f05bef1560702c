"""Cross-layer bit allocation (quantizer/allocation.py): the allocation rule against its closed form,
the Fisher proxy against a finite-difference loss change, and a tiny model quantized end to end with
the model average held to the target."""
from __future__ import annotations

import pytest
import torch

from babai_quantizer.allocation import allocate, output_fisher, quantize_allocated
from babai_quantizer.calibration import calibration_windows, load_causal_lm
from babai_quantizer.options import QuantizeOptions
from tests.test_driver import tiny_model_dir  # noqa: F401  (fixture)


def test_allocation_without_clamps_is_the_closed_form():
    """b = mean + v − Σn·v/Σn when no target reaches a clamp; the n-weighted mean is kept."""
    v = {"a": 0.3, "b": -0.2, "c": 0.05}
    n = {"a": 100, "b": 300, "c": 50}
    m = sum(v[k] * n[k] for k in v) / sum(n.values())
    got = allocate(v, n, 3.3)
    for k in v:
        assert got[k] == pytest.approx(3.3 + v[k] - m, abs=1e-9)


def test_allocation_clamps_and_keeps_the_mean():
    v = {"a": 5.0, "b": -5.0, "c": 0.0, "d": 0.4}
    n = {"a": 10, "b": 10, "c": 50, "d": 30}
    got = allocate(v, n, 3.0)
    assert got["a"] == pytest.approx(4.5) and got["b"] == pytest.approx(1.6)
    assert sum(got[k] * n[k] for k in v) / sum(n.values()) == pytest.approx(3.0, abs=1e-9)
    assert got["d"] > got["c"]
    wide = allocate(v, n, 3.0, span=2.5)            # the span moves the clamps: 3.0 ± 2.5, floored at MIN_BITS
    assert wide["a"] == pytest.approx(5.5) and wide["b"] == pytest.approx(1.6)
    assert sum(wide[k] * n[k] for k in v) / sum(n.values()) == pytest.approx(3.0, abs=1e-9)
    with pytest.raises(ValueError, match="allocation_span"):
        QuantizeOptions(format="hptq", target_bits=3.0, allocation="fisher", allocation_span=0).validate()


def test_fisher_proxy_is_the_squared_output_gradient(tiny_model_dir):
    """output_fisher = Σ_windows ‖∂loss/∂y‖² / N for the linear's output y (N features), against
    torch.autograd.grad taken directly on the output."""
    model, tok = load_causal_lm(tiny_model_dir)
    model.float()
    windows = calibration_windows(tok, (tiny_model_dir / "calib.txt").read_text(), 3, 32, seed=0)
    name = "model.layers.1.mlp.down_proj"
    fisher = output_fisher(model, windows, [name])[name]
    linear = model.get_submodule(name)
    total = 0.0
    for w in windows:
        outs = []
        h = linear.register_forward_hook(lambda m, a, out: outs.append(out))
        h2 = model.get_input_embeddings().register_forward_hook(lambda m, a, out: out.requires_grad_())
        with torch.enable_grad():
            loss = model(input_ids=w[None], labels=w[None]).loss
            (g,) = torch.autograd.grad(loss, outs[0])
        h.remove(), h2.remove()
        total += float(g.square().sum()) / linear.out_features
    assert fisher == pytest.approx(total, rel=1e-5)
    assert fisher > 0


def test_fisher_allocation_holds_the_model_average(tiny_model_dir):
    model, tok = load_causal_lm(tiny_model_dir)
    windows = calibration_windows(tok, (tiny_model_dir / "calib.txt").read_text(), 6, 32, seed=0)
    options = QuantizeOptions(format="hptq", target_bits=3.5, col_steps="ldl", allocation="fisher",
                              row_parallel_blocks=2)
    result, plan = quantize_allocated(model, windows, options, progress=False)
    report = result.report()
    assert report["totals"]["effective_bits"] == pytest.approx(3.5, abs=0.05)
    targets = {n: e["target_bits"] for n, e in plan["layers"].items()}
    assert set(targets) == set(report["layers"])
    assert max(targets.values()) - min(targets.values()) > 0.1          # the layers do get different bits
    for n, r in report["layers"].items():
        assert r["effective_bits"] == pytest.approx(targets[n], abs=0.05)
        assert r["bound_holds"]
    with pytest.raises(ValueError, match="allocation"):
        QuantizeOptions(format="ssqr", allocation="fisher").validate()
