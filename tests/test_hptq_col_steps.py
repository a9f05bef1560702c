"""HPTQ per-column steps (issue 23, format version 2): α from the LDL diagonal, the search, Babai's
bound with per-column steps against an independent float64 reference, the `col_steps` tensor, the
runtime layout and the kernel adapters that apply α to x, version-1 compatibility."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from babai_kernels import runtime
from babai_kernels.contract import (BabaiCheckpointConfig, config_from_dict, present_optional_tensors,
                                    quantized_modules)
from babai_kernels.hptq import tp as hptq_tp
from babai_kernels.hptq.pack import check_hptq_tensors, decode_hptq, dequantize_codes, dequantize_hptq, encode_hptq
from babai_kernels.hptq.reference import hptq_linear_reference
from babai_quantizer.formats.hptq import quantize_hptq, quantize_hrtn
from babai_quantizer.lattice.grids import UnboundedGrid
from babai_quantizer.lattice.reference import babai_reference
from babai_quantizer.options import QuantizeOptions, parse_col_steps
from tests.fixtures.tiny_checkpoint import random_col_steps


def _problem(seed: int, n: int = 48, k: int = 128, spread: float = 3.0):
    """W (N, K) and H = XᵀX (K, K) float64 with input scales spanning 10^spread (a wide LDL diagonal)."""
    g = torch.Generator().manual_seed(seed)
    X = torch.randn(4 * k, k, generator=g, dtype=torch.float64)
    X = X @ (torch.eye(k, dtype=torch.float64) + 0.3 * torch.randn(k, k, generator=g, dtype=torch.float64))
    X = X * torch.logspace(-spread / 2, spread / 2, k, dtype=torch.float64)[torch.randperm(k, generator=g)]
    return 0.05 * torch.randn(n, k, generator=g, dtype=torch.float64), X.T @ X


def _np_ldl_diagonal(H: np.ndarray, order: np.ndarray) -> np.ndarray:
    """D (K,) of H[order][:, order] = L D Lᵀ (numpy Cholesky, squared diagonal), in `order`."""
    return np.diag(np.linalg.cholesky(H[np.ix_(order, order)])) ** 2


def _damped(H: torch.Tensor, rel: float = 0.01) -> np.ndarray:
    h = H.numpy().copy()
    return h + rel * np.mean(np.diag(h)) * np.eye(h.shape[0])


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_per_column_steps_reproduce_babai_and_its_bound(seed):
    """Float64 sweep with α: the codes are Babai's (reference, per-coordinate steps s·α_j, reversed GPTQ
    order) and ‖X(w − q)‖² ≤ ¼ Σ_j D_jj α_j² s² with D from numpy's LDL in the Babai order; α ∝ D^{-1/2}."""
    W, H = _problem(seed)
    r = quantize_hptq(W, H, target_bits=3.5, col_steps="ldl", dtype=torch.float64, ordering="act")
    Hd = _damped(H)
    act = np.argsort(-np.diag(Hd), kind="stable")          # GPTQ order; Babai's is its reverse
    babai_order = act[::-1].copy()
    D_babai = _np_ldl_diagonal(Hd, babai_order)              # D_jj along the Babai basis order
    alpha = r.tensors["col_steps"].double().numpy()
    # α_j √D_jj is one constant over the columns (up to α's float16 rounding, 2^-11 relative)
    c = alpha[babai_order] * np.sqrt(D_babai)
    assert np.allclose(c, np.exp(np.mean(np.log(c))), rtol=2e-3)
    assert np.isclose(np.exp(np.mean(np.log(alpha))), 1.0, rtol=2e-3)
    s = r.search["scale"]
    S = torch.from_numpy(np.broadcast_to(s * alpha, W.shape).copy())
    z_ref, _, _ = babai_reference(W, torch.from_numpy(Hd), S, UnboundedGrid(), torch.from_numpy(babai_order))
    z = decode_hptq(r.tensors, W.shape[1])
    assert torch.equal(z, z_ref)
    E = W.numpy() - r.q_dequant.double().numpy()
    err = np.einsum("nk,kl,nl->n", E, Hd, E)
    bound = 0.25 * (D_babai[None, :] * (s * alpha[babai_order][None, :]) ** 2).sum(1)
    assert np.allclose(r.bound.numpy(), bound, rtol=1e-9)
    assert np.allclose(r.error.numpy(), err, rtol=1e-9)
    assert (err <= bound * (1 + 1e-9)).all()


def test_per_column_steps_count_their_bits_and_cut_the_error():
    """At the same stored bits (α's 16 bits per column counted), per-column steps beat one step on a
    Hessian whose LDL diagonal spans decades, for Babai and for RTN; the search lands on the target."""
    W, H = _problem(5, n=96, k=128, spread=4.0)
    for quantize in (quantize_hptq, quantize_hrtn):
        one = quantize(W, H, target_bits=3.3)
        per = quantize(W, H, target_bits=3.3, col_steps="ldl")
        assert abs(per.effective_bits - 3.3) <= 0.05 and abs(one.effective_bits - 3.3) <= 0.05
        counted = 8 * sum(t.numel() * t.element_size() for t in per.tensors.values()) / W.numel()
        assert per.effective_bits == pytest.approx(counted)
        assert float(per.error.sum()) < 0.8 * float(one.error.sum())


def test_stored_weight_is_the_reference_dequantizer_bit_for_bit():
    W, H = _problem(3)
    for quantize in (quantize_hptq, quantize_hrtn):
        r = quantize(W, H, target_bits=4.0, col_steps="ldl0.5")
        assert r.tensors["col_steps"].dtype == torch.float16
        assert torch.equal(dequantize_hptq(r.tensors, W.shape[1]), r.q_dequant)


def test_col_steps_option_is_validated():
    assert parse_col_steps("none") == 0 and parse_col_steps("ldl") == 1 and parse_col_steps("ldl0.5") == 0.5
    for bad in ("ldl3", "ldl-1", "ldlx", "waterfill"):
        with pytest.raises(ValueError, match="col_steps"):
            parse_col_steps(bad)
    with pytest.raises(ValueError, match="col_steps"):
        QuantizeOptions(format="ssqr", col_steps="ldl").validate()
    with pytest.raises(ValueError, match="col_steps"):
        QuantizeOptions(format="hptq", target_bits=3.0, col_steps="ldl", reduce="lll").validate()


def _layer(seed=0, n=40, k=64, chunk=32):
    g = torch.Generator().manual_seed(seed)
    z = torch.randint(-9, 10, (n, k), generator=g, dtype=torch.int32)
    z[0, :2] = torch.tensor([300, -5000], dtype=torch.int32)     # codes beyond any dense width
    alpha = random_col_steps(k, g)
    return encode_hptq(z, 0.0123, chunk, col_steps=alpha), z, alpha


def test_col_steps_tensor_checks():
    tensors, z, alpha = _layer()
    check_hptq_tensors(tensors)
    for bad, match in ((alpha.float(), "dtype"), (alpha[:10], r"\(64,\)"),
                       (torch.where(torch.arange(64) == 3, 0.0, alpha.float()).half(), "column 3")):
        t = dict(tensors, col_steps=bad)
        with pytest.raises(ValueError, match=match):
            dequantize_hptq(t, 64)
    # the weight: (s·z)·α in float32, column by column
    expected = torch.tensor(0.0123, dtype=torch.float32) * z.float()
    assert torch.equal(dequantize_hptq(tensors, 64), expected * alpha.float()[None, :])


def test_runtime_layout_and_kernels_apply_alpha_to_x():
    """runtime.dequantize of the layout = the reference dequantizer (bit for bit); the torch
    reference, the Huffman-decode kernel and a dense-residual kernel apply α to x and agree with
    hptq_linear_reference."""
    from babai_kernels.choices.cpu import TorchInt8CPU
    from babai_kernels.choices.reference import HuffmanDecodeCPU, TorchReference
    from babai_kernels.layer_spec import LinearSpec

    tensors, z, alpha = _layer()
    for bits in (5, 8):
        layout = runtime.from_hptq([tensors], 64, bits)
        assert torch.equal(runtime.dequantize(layout), dequantize_hptq(tensors, 64))
    x = torch.randn(3, 64)
    expected = hptq_linear_reference(x, tensors)
    assert torch.allclose(expected, x @ dequantize_codes(z, tensors["hptq_scale"], alpha).T, rtol=1e-5, atol=1e-4)
    spec = LinearSpec("hptq", None, (40, 64), torch.float32, torch.device("cpu"), [tensors])
    for kernel in (TorchReference(spec), HuffmanDecodeCPU(spec)):
        assert torch.allclose(kernel.apply(x, None), expected, rtol=1e-5, atol=1e-4)
    bf = LinearSpec("hptq", None, (40, 64), torch.bfloat16, torch.device("cpu"), [tensors])
    ok, why = TorchInt8CPU.can_implement(bf)
    if ok:
        y = TorchInt8CPU(bf).apply(x.bfloat16(), None).float()
        assert torch.allclose(y, hptq_linear_reference(x.bfloat16(), tensors).float(), rtol=3e-2,
                              atol=3e-2 * float(expected.abs().max()))


def test_fused_siblings_must_share_alpha():
    a, _, alpha = _layer(0)
    b = encode_hptq(torch.ones(8, 64, dtype=torch.int32), 0.5, 32, col_steps=alpha)
    assert torch.equal(runtime.hptq_col_scale([a, b]), alpha.float())
    c = dict(b, col_steps=(alpha.float() * 2).half())
    with pytest.raises(ValueError, match="same per-column steps"):
        runtime.from_hptq([a, c], 64)
    with pytest.raises(ValueError, match="same per-column steps"):
        runtime.hptq_col_scale([a, {k: v for k, v in b.items() if k != "col_steps"}])


def test_row_parallel_slices_carry_their_columns_of_alpha():
    tensors, _, _ = _layer(chunk=16)
    full = dequantize_hptq(tensors, 64)
    for part in range(2):
        piece = hptq_tp.slice_cols(tensors, part, 2)
        assert torch.equal(dequantize_hptq(piece, 32), full[:, 32 * part: 32 * (part + 1)])
    rows = hptq_tp.slice_rows(tensors, 5, 20)
    assert torch.equal(dequantize_hptq(rows, 64), full[5:20])


def test_version_1_stays_readable_and_col_steps_need_version_2():
    v1 = config_from_dict({"quant_method": "babai", "version": 1, "format": "hptq", "target_bits": 3.3,
                           "max_code_len": 12, "escape_bits": 16}, "config.json")
    v2 = BabaiCheckpointConfig.hptq(3.3)
    assert v1.version == 1 and v2.version == 2
    base = [f"m.{n}" for n in v1.tensor_names]
    assert quantized_modules(base, v1, "ckpt") == ["m"]
    assert present_optional_tensors(base, ["m"], v2) == ()
    with pytest.raises(ValueError, match="unexpected tensor m.col_steps"):
        quantized_modules(base + ["m.col_steps"], v1, "ckpt")
    assert quantized_modules(base + ["m.col_steps"], v2, "ckpt") == ["m"]
    assert present_optional_tensors(base + ["m.col_steps"], ["m"], v2) == ("col_steps",)
    two = base + [n.replace("m.", "p.") for n in base] + ["m.col_steps"]
    with pytest.raises(ValueError, match="p.col_steps"):
        present_optional_tensors(two, ["m", "p"], v2)
    with pytest.raises(ValueError, match="version"):
        config_from_dict({"quant_method": "babai", "version": 3, "format": "hptq"}, "config.json")
    # a version-1 layer (no col_steps) decodes and serves as before: y = s·z x
    tensors, z, _ = _layer()
    del tensors["col_steps"]
    assert torch.equal(dequantize_hptq(tensors, 64), tensors["hptq_scale"] * z.float())
    assert runtime.from_hptq([tensors], 64).col_scale is None
