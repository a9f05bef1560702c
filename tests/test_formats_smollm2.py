"""SSQR outlier rate and HPTQ bits on real SmolLM2 layer-0 weights (Hessians from correlated
random activations, so the test needs only the model weights)."""
import pytest
import torch
from safetensors import safe_open

from babai_quantizer.formats import quantize_hptq, quantize_ssqr
from test_formats_ssqr import correlated_layer

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def real_weights(smollm2_dir):
    names = ("model.layers.0.self_attn.q_proj.weight", "model.layers.0.mlp.down_proj.weight")
    with safe_open(str(smollm2_dir / "model.safetensors"), "pt") as f:
        return {n.split(".")[-2]: f.get_tensor(n).float() for n in names}


@pytest.mark.parametrize("name", ["q_proj", "down_proj"])
def test_real_layer_ssqr_rate_and_hptq_bits(real_weights, name):
    W = real_weights[name]
    _, H = correlated_layer(1, W.shape[1], seed=5, heavy_tails=False)
    r = quantize_ssqr(W, H, bits=4, group_size=64, outlier_rate=0.01,
                      row_parallel_blocks=4 if name == "down_proj" else 1)
    assert abs(float(r.outlier_rate.mean()) - 0.01) <= 0.005
    assert float((r.outlier_rate - 0.01).abs().max()) <= 0.005
    h = quantize_hptq(W, H, target_bits=3.125)
    assert abs(h.effective_bits - 3.125) <= 0.05
    assert bool((h.error <= h.bound).all())
