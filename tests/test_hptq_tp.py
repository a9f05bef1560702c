"""Tensor-parallel slicing of HPTQ layers (kernels/hptq/tp.py) against decode → slice."""
import numpy as np
import pytest
import torch

from babai_kernels.hptq import decode_hptq, encode_hptq, slice_cols, slice_rows
from babai_kernels.hptq.bits import gather_bit_ranges


def layer(n=10, k=96, chunk_cols=16, seed=0):
    gen = torch.Generator().manual_seed(seed)
    z = (torch.randn(n, k, generator=gen) * 9).round().to(torch.int64)
    z[3, 7] = 20000                               # an escape inside a sliced range
    return z, encode_hptq(z, 0.03, chunk_cols)


def test_gather_bit_ranges_matches_bit_strings():
    rng = np.random.default_rng(0)
    stream = torch.from_numpy(rng.integers(-2**31, 2**31, size=20, dtype=np.int64).astype(np.int32))
    bits = "".join(format(w & 0xFFFFFFFF, "032b") for w in stream.tolist())
    starts = torch.tensor([0, 5, 37, 100, 300, 639])
    lengths = torch.tensor([3, 64, 1, 0, 170, 1])
    want = "".join(bits[s:s + l] for s, l in zip(starts.tolist(), lengths.tolist()))
    got = "".join(format(w & 0xFFFFFFFF, "032b") for w in gather_bit_ranges(stream, starts, lengths).tolist())
    assert got[:len(want)] == want and set(got[len(want):]) <= {"0"} and len(got) - len(want) < 32


@pytest.mark.parametrize("start,stop", [(0, 10), (0, 1), (3, 4), (2, 9), (9, 10)])
def test_slice_rows_equals_decoded_rows(start, stop):
    z, tensors = layer()
    part = slice_rows(tensors, start, stop)
    assert torch.equal(decode_hptq(part, 96), z[start:stop].to(torch.int32))
    assert torch.equal(part["hptq_scale"], tensors["hptq_scale"])


@pytest.mark.parametrize("parts", [1, 2, 3, 6])
def test_slice_cols_equals_decoded_columns(parts):
    z, tensors = layer()
    width = 96 // parts
    for part in range(parts):
        piece = slice_cols(tensors, part, parts)
        assert torch.equal(decode_hptq(piece, width), z[:, part * width:(part + 1) * width].to(torch.int32))


def test_bad_slices_raise():
    _, tensors = layer()
    with pytest.raises(ValueError, match="slice_rows"):
        slice_rows(tensors, 4, 4)
    with pytest.raises(ValueError, match="slice_cols"):
        slice_cols(tensors, 0, 4)                 # 6 chunks per row do not split into 4 parts
    with pytest.raises(ValueError, match="stream"):
        slice_rows({**tensors, "stream": tensors["stream"][:-1]}, 0, 2)
