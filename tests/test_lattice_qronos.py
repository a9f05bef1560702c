"""Qronos-style float target: Babai on the lattice of X̂ with target Xw."""
import torch

from babai_quantizer.lattice import damp, float_target_weights, quantize_layer
from tests.fixtures.synthetic import random_layer


def test_float_target_reduces_to_plain_when_inputs_match():
    W, X, H = random_layer(16, 32, seed=11)
    plain = quantize_layer(W, H, bits=3, group_size=16, dtype=torch.float64)
    qronos = quantize_layer(W, H, bits=3, group_size=16, G_cross=X.T @ X, dtype=torch.float64)
    assert torch.equal(plain.codes, qronos.codes)
    assert torch.equal(plain.scales, qronos.scales)


def test_float_target_is_the_least_squares_target():
    W, X, _ = random_layer(6, 24, seed=12)
    Xh = X + 0.3 * torch.randn(X.shape, generator=torch.Generator().manual_seed(0), dtype=X.dtype)
    Hd, lam = damp(Xh.T @ Xh, 0.0)
    W_hat = float_target_weights(W, Hd, Xh.T @ X, lam)
    lstsq = torch.linalg.lstsq(Xh, X @ W.T).solution.T        # argmin ‖X̂ŵ − Xw‖
    assert torch.allclose(W_hat, lstsq, rtol=1e-8, atol=1e-10)
    # With damping, (ŵ − q)ᵀH(ŵ − q) − ‖Xw − X̂q‖² − λ‖w − q‖² does not depend on q.
    Hd, lam = damp(Xh.T @ Xh, 0.05)
    W_hat = float_target_weights(W, Hd, Xh.T @ X, lam)
    gaps = []
    for seed in range(3):
        Q = torch.round(torch.randn(W.shape, generator=torch.Generator().manual_seed(seed), dtype=W.dtype) * 3) * 0.01
        lattice = (((W_hat - Q) @ Hd) * (W_hat - Q)).sum(1)
        true = (X @ W.T - Xh @ Q.T).square().sum(0) + lam * (W - Q).square().sum(1)
        gaps.append(lattice - true)
    assert torch.allclose(gaps[0], gaps[1], rtol=1e-8) and torch.allclose(gaps[0], gaps[2], rtol=1e-8)


def test_float_target_lowers_output_error_against_float_model():
    W, X, _ = random_layer(64, 48, seed=13, samples=400)
    Xh = X + 0.2 * X.std() * torch.randn(X.shape, generator=torch.Generator().manual_seed(1), dtype=X.dtype)
    H = Xh.T @ Xh
    kw = dict(bits=4, group_size=16, grid="unbounded", dtype=torch.float64)
    plain = quantize_layer(W, H, **kw)
    scales = plain.scales
    qronos = quantize_layer(W, H, G_cross=Xh.T @ X, scales=scales, **kw)
    err = lambda q: (X @ W.T - Xh @ q.double().T).square().sum()  # noqa: E731
    assert err(qronos.q) < 0.9 * err(plain.q)
