"""Basis reduction before Babai (quantizer/lattice/reduction.py, quantize_hptq(reduce=)) against the
paper's Alg. 2 (reference.babai_reduced_reference), the Cholesky-form Babai and fp64 numpy."""
import sys

import numpy as np
import pytest
import torch

pytest.importorskip("fpylll")

from babai_kernels.hptq.pack import decode_hptq
from babai_quantizer.formats import quantize_hptq
from babai_quantizer.lattice import UnboundedGrid, damp, ordering, prepare_hessian, reduce_basis, sweep
from babai_quantizer.lattice import reduction
from babai_quantizer.lattice.reference import babai_reduced_reference, babai_reference
from test_formats_ssqr import correlated_layer


def damped_layer(N, K, seed):
    W, H = correlated_layer(N, K, seed=seed)
    Hd, _ = damp(H.double(), 0.01)
    return W, H, Hd, ordering(Hd, "act")


@pytest.mark.parametrize("method,window", [("lll", None), ("lll", 32), ("bkz-8", 48)])
def test_sweep_on_reduced_basis_is_algorithm_2_and_z_is_T_z_red(method, window):
    N, K = 24, 96
    W, _, Hd, perm = damped_layer(N, K, seed=7)
    red = reduce_basis(Hd, perm, method, window=window)
    assert not red.stats()["identity"]
    s = float(W.abs().max()) / 6
    z_ref, z_red_ref = babai_reduced_reference(W, Hd, s, red.order, red.T)
    # Fast form: the production sweep on H' = TᵀH_T T, weights T⁻¹w, Babai order 0..K-1.
    prep = prepare_hessian(red.hessian(Hd), perm=torch.arange(K - 1, -1, -1), damping=0.0, dtype=torch.float64)
    res = sweep(red.weights(W), prep, torch.full((N, 1), s), torch.zeros(K, dtype=torch.int64), UnboundedGrid())
    assert torch.equal(res.codes.long(), z_red_ref)
    # The Cholesky-form Babai on H' in its own order finds the same reduced point.
    z_chol, _, _ = babai_reference(red.weights(W), red.hessian(Hd), torch.full((N, K), s), UnboundedGrid(),
                                   torch.arange(K))
    assert torch.equal(z_chol.long(), z_red_ref)
    # z = T·z' exactly, and s·R_T·z_t is the reduced Babai point s·(R_T·T)·z' (fp64 numpy).
    z = red.codes(res.codes)
    assert torch.equal(z, z_ref)
    t = red.order.numpy()
    R = np.linalg.cholesky(Hd.numpy()[np.ix_(t, t)]).T
    T = red.T.numpy().astype(np.float64)
    assert np.allclose(z.numpy()[:, t] @ R.T, res.codes.double().numpy() @ (R @ T).T, rtol=0, atol=1e-9)


@pytest.mark.parametrize("method,window", [("lll", None), ("lll", 40), ("bkz-6", None)])
def test_reduced_basis_spans_the_same_lattice_and_is_lll_reduced(method, window):
    K = 96
    _, _, Hd, perm = damped_layer(8, K, seed=11)
    red = reduce_basis(Hd, perm, method, window=window)
    T, T_inv = red.T, red.T_inv
    assert T.dtype == T_inv.dtype == torch.int64
    assert torch.equal(T @ T_inv, torch.eye(K, dtype=torch.int64))       # integer inverse: |det T| = 1
    assert abs(abs(np.linalg.det(T.double().numpy())) - 1) < 1e-9
    width = window or K
    blocks = torch.block_diag(*[torch.ones(min(width, K - a), min(width, K - a)) for a in range(0, K, width)])
    assert (T[blocks == 0] == 0).all()                                  # block-local: windows only
    # Gram–Schmidt lengths of R·T in fp64 numpy; same volume; Lovász (δ = 0.99) inside each window.
    t = red.order.numpy()
    R = np.linalg.cholesky(Hd.numpy()[np.ix_(t, t)]).T
    Q, Rr = np.linalg.qr(R @ T.double().numpy())
    r = np.abs(np.diag(Rr))
    assert np.allclose(r, red.r_after.numpy(), rtol=1e-9)
    assert np.allclose(np.diag(R), red.r_before.numpy(), rtol=1e-12)
    assert np.isclose(np.log(r).sum(), np.log(np.diag(R)).sum(), rtol=0, atol=1e-9)
    mu = Rr / np.diag(Rr)[None, :]                                       # mu[i, j] = ⟨b_j, b̃_i⟩/‖b̃_i‖²
    for j in range(K - 1):
        if (j + 1) % width:
            assert 0.99 * r[j] ** 2 <= r[j + 1] ** 2 + mu[j, j + 1] ** 2 * r[j] ** 2 + 1e-9 * r[j] ** 2
    stats = red.stats()
    assert stats["trace_D_after"] < stats["trace_D_before"]
    assert np.isclose(stats["trace_D_after"], (r ** 2).sum())


def test_identity_T_equals_plain_hptq_bit_for_bit(monkeypatch):
    W, H = correlated_layer(32, 128, seed=3)

    def identity(R, *_):
        eye = torch.eye(R.shape[0], dtype=torch.int64)
        return eye, eye.clone()

    plain = quantize_hptq(W, H, target_bits=3.3)
    monkeypatch.setattr(reduction, "_reduce_window", identity)
    same = quantize_hptq(W, H, target_bits=3.3, reduce="lll", reduce_window=48)
    assert same.search["reduction"]["identity"]
    for name, t in plain.tensors.items():
        assert torch.equal(t, same.tensors[name]), name
    assert torch.equal(plain.q_dequant.view(torch.int32), same.q_dequant.view(torch.int32))
    assert torch.equal(plain.error, same.error) and torch.equal(plain.bound, same.bound)
    assert plain.search["bits_per_step"] == same.search["bits_per_step"]


def test_already_reduced_basis_gives_T_identity_and_plain_hptq():
    """Diagonal H: act-order's Babai order has ascending orthogonal lengths, which LLL/BKZ keep."""
    K = 64
    H = torch.diag(torch.linspace(1.0, 9.0, K, dtype=torch.float64))
    red = reduce_basis(H, ordering(H, "act"), "bkz-4", window=None)
    assert red.stats()["identity"]
    W = torch.randn(16, K, generator=torch.Generator().manual_seed(0))
    plain, same = (quantize_hptq(W, H.float(), target_bits=4.3, reduce=r) for r in ("none", "bkz-4"))
    assert same.search["reduction"]["identity"]
    assert all(torch.equal(t, same.tensors[n]) for n, t in plain.tensors.items())
    assert torch.equal(plain.q_dequant.view(torch.int32), same.q_dequant.view(torch.int32))


def test_reduced_hptq_meets_target_and_bound_and_stores_z():
    W, H = correlated_layer(48, 128, seed=5)
    r = quantize_hptq(W, H, target_bits=3.3, reduce="lll", reduce_window=64)
    assert abs(r.effective_bits - 3.3) <= 0.05
    assert bool((r.error <= r.bound).all())
    s = float(r.tensors["hptq_scale"][0])
    stats = r.search["reduction"]
    assert np.isclose(float(r.bound[0]), 0.25 * s * s * stats["trace_D_after"], rtol=1e-4)
    assert torch.equal(r.tensors["hptq_scale"] * decode_hptq(r.tensors, 128).float(), r.q_dequant)


def test_bad_input_gives_clear_errors():
    K = 48
    _, H, Hd, perm = damped_layer(4, K, seed=1)
    with pytest.raises(ValueError, match="H: not positive definite after damping"):
        reduce_basis(H.double() - 2 * torch.eye(K, dtype=torch.float64) * float(H.diagonal().max()), perm, "lll")
    big = torch.eye(2100, dtype=torch.float64)
    with pytest.raises(ValueError, match=r"window: None reduces 2100 columns.*'lll'.*2048"):
        reduce_basis(big, torch.arange(2100), "lll", window=None)
    with pytest.raises(ValueError, match=r"window: 1500 .*'bkz'.*1024"):
        reduce_basis(big, torch.arange(2100), "bkz-10", window=1500)
    with pytest.raises(ValueError, match="window: expected a positive integer"):
        reduce_basis(Hd, perm, "lll", window=0)
    for bad in ("LLL", "bkz-1", "bkz", "none "):
        with pytest.raises(ValueError, match="reduce: expected 'none', 'lll' or 'bkz-<B>'"):
            quantize_hptq(torch.randn(4, K), H, reduce=bad)


def test_missing_fpylll_names_the_extra(monkeypatch):
    _, _, Hd, perm = damped_layer(4, 32, seed=2)
    monkeypatch.setitem(sys.modules, "fpylll", None)
    with pytest.raises(ImportError, match=r"pip install 'vllm-babai\[reduce\]'"):
        reduce_basis(Hd, perm, "lll")
