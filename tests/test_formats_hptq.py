"""HPTQ / HRTN searches (quantizer/formats/hptq.py) against the kernels' codec and fp64 numpy."""
import numpy as np
import pytest
import torch

from babai_kernels.hptq.pack import choose_chunk_cols, decode_hptq, dequantize_hptq
from babai_quantizer.formats import quantize_hptq, quantize_hrtn
from test_formats_ssqr import correlated_layer


@pytest.fixture(scope="module")
def layer():
    return correlated_layer(64, 256, seed=3)


def numpy_error_and_bound(W, H, result, damping=0.01):
    """fp64 numpy: (w − q)ᵀ(H + λI)(w − q) per row and ¼ s² tr(D) (D: LDL diagonal of the damped H
    in act-order's Babai order; tr(D) does not depend on how ties are broken within equal diag)."""
    Hd = H.double().numpy()
    Hd = Hd + damping * np.mean(np.diag(Hd)) * np.eye(len(Hd))
    E = W.double().numpy() - result.q_dequant.double().numpy()
    babai = np.argsort(-np.diag(Hd), kind="stable")[::-1]
    D = np.diag(np.linalg.cholesky(Hd[np.ix_(babai, babai)])) ** 2
    s = float(result.tensors["hptq_scale"][0])
    return np.einsum("nk,kl,nl->n", E, Hd, E), 0.25 * s * s * D.sum()


@pytest.mark.parametrize("target", [3.125, 4.125])
@pytest.mark.parametrize("quantize", [quantize_hptq, quantize_hrtn])
def test_round_trip_and_bits_meet_target(layer, quantize, target):
    W, H = layer
    r = quantize(W, H, target_bits=target)
    K = W.shape[1]
    assert torch.equal(dequantize_hptq(r.tensors, K).view(torch.int32), r.q_dequant.view(torch.int32))
    stored = sum(t.numel() * t.element_size() * 8 for t in r.tensors.values())
    assert r.effective_bits == stored / W.numel()
    assert abs(r.effective_bits - target) <= 0.05
    # Codes are unbounded integers in ORIGINAL column order: q = s·z column by column.
    z = decode_hptq(r.tensors, K)
    assert torch.equal(r.tensors["hptq_scale"] * z.float(), r.q_dequant)


def test_hptq_error_within_babai_bound_and_below_hrtn(layer):
    W, H = layer
    r = quantize_hptq(W, H, target_bits=3.125)
    error, bound = numpy_error_and_bound(W, H, r)
    np.testing.assert_allclose(r.error.numpy(), error, rtol=1e-6)
    np.testing.assert_allclose(r.bound.numpy(), bound, rtol=1e-6)
    assert (error <= bound).all()
    hrtn = quantize_hrtn(W, H, target_bits=3.125)
    assert hrtn.bound is None
    assert float(r.error.sum()) < float(hrtn.error.sum())


def test_chunk_width_follows_row_parallel_blocks(layer):
    W, H = layer
    r = quantize_hrtn(W, H, target_bits=3.125, row_parallel_blocks=8)
    assert r.tensors["chunk_bits"].shape == (64, 256 // choose_chunk_cols(256, 8))
    assert r.search["chunk_cols"] == choose_chunk_cols(256, 8)
    r = quantize_hrtn(W, H, target_bits=3.125, chunk_cols=128)
    assert r.tensors["chunk_bits"].shape == (64, 2)


@pytest.mark.parametrize("kwargs, name", [
    ({"target_bits": 0.5}, "target_bits"), ({"chunk_cols": 100}, "chunk_cols"),
    # ≥ 1 bit per code + 16/32 bits of chunk_bits per weight: 1.2 is unreachable.
    ({"target_bits": 1.2, "chunk_cols": 32}, "target_bits"),
])
def test_bad_or_unreachable_arguments_name_themselves(layer, kwargs, name):
    W, H = layer
    with pytest.raises(ValueError, match=name):
        quantize_hrtn(W, H, **kwargs)
