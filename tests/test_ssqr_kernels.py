"""SSQR linear entry points on CPU: refusals, bad input, the kernel code layout.

The Triton cases (and the custom op's checks) live in tests/interpret/ (run by
tests/test_triton_interpreter.py).
"""
import pytest
import torch

from babai_kernels.ssqr import pack_ssqr, prepare_ssqr, ssqr_linear
from babai_kernels.ssqr.tiles import block_positions, repack_codes, unpack_kernel_codes
from tests.test_ssqr_pack import random_layer


def test_ssqr_linear_refuses_where_triton_cannot_run(monkeypatch):
    """No silent dense fallback: on a CPU without the interpreter the op says why."""
    monkeypatch.setattr("babai_kernels.ssqr.linear.use_triton", lambda device: False)
    p = prepare_ssqr(pack_ssqr(*random_layer(8, 64, 4, 32, seed=1), bits=4), "cpu")
    with pytest.raises(ValueError, match="Triton cannot run on cpu"):
        ssqr_linear(torch.randn(3, 64, dtype=torch.bfloat16), p)


def test_ssqr_linear_rejects_bad_input():
    p = prepare_ssqr(pack_ssqr(*random_layer(8, 64, 4, 32, seed=1), bits=4), "cpu")
    x = torch.randn(3, 64, dtype=torch.float16)
    with pytest.raises(ValueError, match="x: dtype"):
        ssqr_linear(x.int(), p)
    with pytest.raises(ValueError, match="x: dtype torch.float32"):
        ssqr_linear(x.float(), p)
    with pytest.raises(ValueError, match="x: last dim must be K=64"):
        ssqr_linear(x[:, :32].contiguous(), p)
    with pytest.raises(ValueError, match="x: must be contiguous"):
        ssqr_linear(torch.randn(64, 3, dtype=torch.float16).T, p)
    with pytest.raises(ValueError, match="x: on meta"):
        ssqr_linear(x.to("meta"), p)
    with pytest.raises(ValueError, match="bias: expected shape"):
        ssqr_linear(x, p, torch.zeros(7, dtype=torch.float16))
    with pytest.raises(ValueError, match="perm"):
        prepare_ssqr(dict(pack_ssqr(*random_layer(8, 64, 4, 32), bits=4),
                          perm=torch.zeros(64, dtype=torch.int32)), "cpu")


@pytest.mark.parametrize("bits", [2, 3, 4])
def test_kernel_layout_round_trips_and_fills_every_bit(bits):
    z = torch.randint(-(1 << (bits - 1)), 1 << (bits - 1), (5, 256))
    q = repack_codes(z, bits)
    assert q.dtype == torch.int32 and q.shape == (256 * bits // 32, 5)
    assert torch.equal(unpack_kernel_codes(q, bits, 256), z.int())
    places = [(word, bit) for _, _, word, bit in block_positions(bits)]
    assert len(set(places)) == 32 * bits          # a bijection onto the block's b words


def test_kernel_layout_pairs_share_a_field():
    """Columns 2p and 2p+1 of a 4-bit word sit at bits 4p and 16 + 4p (one LOP3 per pair)."""
    z = torch.arange(32).remainder(16).reshape(1, 32) - 8      # u = column % 16
    word = int(repack_codes(z, 4)[1, 0]) & 0xFFFFFFFF           # columns 8..15
    for p in range(4):
        assert (word >> (4 * p)) & 15 == 8 + 2 * p
        assert (word >> (16 + 4 * p)) & 15 == 9 + 2 * p
