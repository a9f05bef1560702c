"""Damping, dead inputs, Cholesky retry, orderings and the LDL diagonal D."""
import logging

import numpy as np
import pytest
import torch

from babai_quantizer.lattice import (CholeskyError, cholesky_with_retry, damp, ldl_diagonal, ordering,
                               prepare_hessian, quantize_layer, trace_D)
from tests.fixtures.synthetic import random_layer
from babai_quantizer.lattice.ordering import min_pivot_babai_order
from babai_quantizer.lattice.reference import gptq_reference, min_pivot_order_reference
from babai_quantizer.lattice.grids import ClippedGrid
from babai_quantizer.lattice.scales import coordinate_scales


def numpy_ldl_diagonal(A):
    """Plain LDLᵀ (no pivoting) of a symmetric positive definite matrix: the D entries."""
    A = np.array(A, dtype=np.float64)
    n = len(A)
    L, D = np.eye(n), np.zeros(n)
    for j in range(n):
        D[j] = A[j, j] - (L[j, :j] ** 2 * D[:j]).sum()
        for i in range(j + 1, n):
            L[i, j] = (A[i, j] - (L[i, :j] * L[j, :j] * D[:j]).sum()) / D[j]
    return D


def test_damping_is_relative_to_mean_diagonal():
    _, _, H = random_layer(2, 16, seed=0)
    Hd, lam = damp(H, 0.05)
    assert lam == pytest.approx(0.05 * float(np.mean(np.diag(H.numpy()))))
    assert torch.allclose(Hd - H, lam * torch.eye(16, dtype=H.dtype))


@pytest.mark.parametrize("method", ["identity", "act", "min-pivot"])
def test_D_matches_numpy_ldl_and_sweep_factor(method):
    _, _, H = random_layer(2, 40, seed=2)
    prep = prepare_hessian(H, ordering=method, dtype=torch.float64)
    T = prep.perm.flip(0).numpy()
    D_babai = numpy_ldl_diagonal(prep.H.numpy()[np.ix_(T, T)])       # Babai order
    assert np.allclose(prep.D.numpy(), D_babai[::-1], rtol=1e-10)
    assert torch.allclose(ldl_diagonal(prep.H, prep.perm), prep.D, rtol=1e-10)
    # U is the upper Cholesky factor of (PᵀHP)⁻¹, as GPTQ computes it.
    P = prep.perm.numpy()
    HPinv = np.linalg.inv(prep.H.numpy()[np.ix_(P, P)])
    assert np.allclose(prep.U.numpy().T @ prep.U.numpy(), HPinv, rtol=1e-8, atol=1e-14)
    assert np.allclose(np.triu(prep.U.numpy()), prep.U.numpy())
    assert trace_D(prep.H, prep.perm) == pytest.approx(D_babai.sum(), rel=1e-10)


def test_orderings_are_the_documented_permutations():
    _, _, H = random_layer(2, 24, seed=4)
    Hd, _ = damp(H)
    diag = np.diag(Hd.numpy())
    assert torch.equal(ordering(Hd, "identity"), torch.arange(24))
    act = ordering(Hd, "act").numpy()
    assert np.all(np.diff(diag[act]) <= 0)                      # GPTQ quantizes largest diag first
    mp = ordering(Hd, "min-pivot")
    assert torch.equal(mp, min_pivot_order_reference(Hd).flip(0))
    with pytest.raises(ValueError, match="ordering"):
        ordering(Hd, "random")


@pytest.mark.parametrize("panel", [1, 5, 16, 64])
def test_blocked_min_pivot_equals_algorithm_3(panel):
    _, _, H = random_layer(2, 50, seed=panel, cond=1e6)
    Hd, _ = damp(H, 1e-6)
    assert torch.equal(min_pivot_babai_order(Hd, panel=panel), min_pivot_order_reference(Hd))


def test_min_pivot_first_babai_pivot_is_smallest_diagonal_and_schur_greedy():
    _, _, H = random_layer(2, 20, seed=9)
    Hd, _ = damp(H)
    T = min_pivot_order_reference(Hd).numpy()
    A = Hd.numpy()
    for j in range(3):       # each pivot is the argmin of the Schur complement's diagonal
        rest = T[j:]
        done = T[:j]
        schur = A[np.ix_(rest, rest)]
        if j:
            schur = schur - A[np.ix_(rest, done)] @ np.linalg.solve(A[np.ix_(done, done)], A[np.ix_(done, rest)])
        assert rest[np.argmin(np.diag(schur))] == T[j]


def test_dead_inputs_are_zeroed_as_gptq_does():
    W, X, _ = random_layer(8, 32, seed=3)
    X[:, [3, 17]] = 0
    H = X.T @ X
    r = quantize_layer(W, H, bits=4, group_size=8, dtype=torch.float64)
    assert (r.codes[:, [3, 17]] == 0).all() and (r.q[:, [3, 17]] == 0).all()
    # Reference: GPTQ on H with H[j,j] = 1 and W[:, j] = 0, same scales.
    Hf = H.clone()
    Hf[[3, 17], [3, 17]] = 1
    Hd, _ = damp(Hf, 0.01)
    W0 = W.clone()
    W0[:, [3, 17]] = 0
    S = coordinate_scales(r.scales.double(), r.perm, r.group_index)
    z, _, _ = gptq_reference(W0, Hd, S, ClippedGrid(4), r.perm)
    assert torch.equal(z, r.codes)
    assert torch.isfinite(r.error).all()


def test_cholesky_retry_raises_damping_and_logs(caplog):
    _, _, H = random_layer(2, 16, seed=5)
    mean_diag = float(torch.diagonal(H).mean())
    H_bad = H - 0.5 * mean_diag * torch.eye(16, dtype=H.dtype)   # indefinite
    assert torch.linalg.eigvalsh(H_bad).min() < 0
    with caplog.at_level(logging.WARNING, logger="babai_quantizer.lattice.hessian"):
        L, Hd, rel = cholesky_with_retry(H_bad, 0.01)
    assert rel > 0.01 and "Cholesky failed" in caplog.text
    assert torch.allclose(L @ L.T, Hd)
    W = torch.randn(4, 16, dtype=torch.float64)
    r = quantize_layer(W, H_bad, bits=4, group_size=8, dtype=torch.float64)
    assert r.damping_used == rel and torch.isfinite(r.q).all()
    with pytest.raises(CholeskyError):
        cholesky_with_retry(H_bad, 1e-3, max_tries=2)


def test_prepare_hessian_reads_both_triangles_alike():
    """A float32 Gram matrix is not exactly symmetric; the factor must not depend on which
    triangle a Cholesky routine reads (GPTQ's and Babai's read opposite ones)."""
    gen = torch.Generator().manual_seed(3)
    X = torch.randn(200, 24, generator=gen)
    H = (X.T @ X).double()
    H_skewed = H + torch.triu(torch.full_like(H, 1e-6), diagonal=1)   # upper ≠ lower
    a = prepare_hessian(H_skewed, ordering="act", dtype=torch.float64)
    b = prepare_hessian(H_skewed.T, ordering="act", dtype=torch.float64)
    assert torch.equal(a.perm, b.perm) and torch.equal(a.U, b.U)
