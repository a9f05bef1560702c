"""HPTQ pack/decode (kernels/hptq/pack.py) against an independent bit-string reader of docs/format.md §3."""
import numpy as np
import pytest
import torch

from babai_kernels.common import stored_bits
from babai_kernels.hptq import (choose_chunk_cols, coded_bits, decode_hptq, dequantize_hptq, encode_hptq,
                          hptq_meta)


def laplace_codes(shape, width, seed, outliers=()):
    gen = torch.Generator().manual_seed(seed)
    u = torch.rand(shape, generator=gen, dtype=torch.float64) - 0.5
    z = (-width * torch.sign(u) * torch.log1p(-2 * u.abs())).round().to(torch.int64)
    for (i, j), v in outliers:
        z[i, j] = v
    return z


def spec_decode(tensors, k):
    """Bit-by-bit reader written from the format text: canonical codes from the table, stream
    bits MSB first per uint32 word, chunks row-major at the running sum of chunk_bits."""
    values = tensors["code_values"].tolist()
    lengths = tensors["code_lengths"].tolist()
    code, prev_len, by_bits = 0, lengths[0], {}
    for i, (v, l) in enumerate(zip(values, lengths)):
        if i:
            code = (code + 1) << (l - prev_len)
        prev_len = l
        by_bits[format(code, f"0{l}b")] = v
    bits = "".join(format(w & 0xFFFFFFFF, "032b") for w in tensors["stream"].tolist())
    chunk_bits = tensors["chunk_bits"].tolist()
    n, per_row = len(chunk_bits), len(chunk_bits[0])
    c = k // per_row
    z = np.zeros((n, k), dtype=np.int64)
    pos = 0
    for r in range(n):
        for ch in range(per_row):
            start = pos
            for col in range(c):
                prefix = ""
                while prefix not in by_bits:
                    prefix += bits[pos]
                    pos += 1
                v = by_bits[prefix]
                if v == -2**31:
                    raw = int(bits[pos:pos + 16], 2)
                    pos += 16
                    v = raw - 65536 if raw >= 32768 else raw
                z[r, ch * c + col] = v
            assert pos - start == chunk_bits[r][ch]
    assert set(bits[pos:]) <= {"0"} and len(bits) - pos < 32
    return z


CASES = [((7, 96), 3.0, 32, 0), ((5, 64), 0.4, 64, 1), ((9, 120), 40.0, 8, 2), ((3, 40), 800.0, 20, 3)]


@pytest.mark.parametrize("shape,width,chunk_cols,seed", CASES)
def test_round_trip_and_independent_reader(shape, width, chunk_cols, seed):
    z = laplace_codes(shape, width, seed, outliers=[((0, 1), 32767), ((1, 0), -32768),
                                                   ((2, 3), 123456), ((0, 5), -99999)])
    tensors = encode_hptq(z, 0.0125, chunk_cols)
    assert torch.equal(decode_hptq(tensors, shape[1]), z.to(torch.int32))
    assert np.array_equal(spec_decode(tensors, shape[1]), z.numpy())
    assert tensors["code_values"].dtype == torch.int32 and tensors["code_lengths"].dtype == torch.uint8


@pytest.mark.parametrize("shape,width,chunk_cols,seed", CASES)
def test_coded_bits_is_the_exact_stored_size(shape, width, chunk_cols, seed):
    z = laplace_codes(shape, width, seed)
    assert coded_bits(z, chunk_cols) == stored_bits(encode_hptq(z, 1.0, chunk_cols))


def test_escapes_are_used_exactly_for_values_without_entry():
    z = laplace_codes((16, 64), 30.0, 5)
    tensors = encode_hptq(z, 1.0, 32)
    table = set(tensors["code_values"].tolist())
    vals, counts = torch.unique(z, return_counts=True)
    for v, c in zip(vals.tolist(), counts.tolist()):
        assert (v in table) == (c >= 3 or not -32768 <= v <= 32767)
    assert -2**31 in table and hptq_meta(tensors, 64)["has_escape"]


def test_int32_input_single_symbol_and_dequantize():
    z = torch.full((4, 32), -3, dtype=torch.int32)
    tensors = encode_hptq(z, 0.5, 16)
    assert tensors["code_lengths"].tolist() == [1] and tensors["stream"].numel() == 4
    assert torch.equal(decode_hptq(tensors, 32), z)
    scale = torch.tensor([0.1], dtype=torch.float32)
    z = laplace_codes((6, 48), 4.0, 9)
    w = dequantize_hptq(encode_hptq(z, 0.1, 16), 48)
    assert w.dtype == torch.float32 and torch.equal(w, scale * z.to(torch.float32))


@pytest.mark.parametrize("k,p", [(1536, 8), (576, 8), (4096, 8), (14336, 8), (96, 5), (1031, 8)])
def test_choose_chunk_cols_follows_the_rule(k, p):
    c = choose_chunk_cols(k, p)
    parts = max(q for q in range(1, p + 1) if k % q == 0 and (k // q >= 256 or q == 1))
    per_part = k // parts
    assert parts == 1 or per_part >= 256
    assert per_part % c == 0 and c <= 512
    assert not any(per_part % d == 0 for d in range(c + 1, min(per_part, 512) + 1))


def test_bad_inputs_raise_clear_errors():
    z = laplace_codes((4, 64), 3.0, 0)
    with pytest.raises(ValueError, match="chunk_cols"):
        encode_hptq(z, 1.0, 24)
    with pytest.raises(ValueError, match="z"):
        encode_hptq(z.float(), 1.0, 32)
    # 4096 values that cannot be escaped, plus a frequent 0: the 12-bit table overflows.
    wide = torch.cat([torch.arange(40000, 40000 + 4096), torch.zeros(64, dtype=torch.int64)]).reshape(65, 64)
    with pytest.raises(ValueError, match="escape bits"):
        encode_hptq(wide, 1.0, 32)
    tensors = encode_hptq(z, 1.0, 32)
    with pytest.raises(ValueError, match="in_features"):
        decode_hptq(tensors, 63)
    with pytest.raises(ValueError, match="missing"):
        decode_hptq({k: v for k, v in tensors.items() if k != "stream"}, 64)


def mutations(tensors, rng):
    """Corrupted copies of a valid layer: (description, tensors, detectable). Bit flips and random
    tables may still decode (Huffman codes resynchronize); structural damage must be detected."""
    stream, bits = tensors["stream"], tensors["chunk_bits"]
    yield "random stream", False, {**tensors, "stream": torch.from_numpy(
        rng.integers(-2**31, 2**31, size=stream.numel(), dtype=np.int64).astype(np.int32))}
    for _ in range(6):
        flipped = stream.clone()
        i, b = int(rng.integers(stream.numel())), int(rng.integers(32))
        flipped[i] = int(np.int32(np.uint32((int(flipped[i]) & 0xFFFFFFFF) ^ (1 << b))))
        yield "bit flip", False, {**tensors, "stream": flipped}
    yield "truncated", True, {**tensors, "stream": stream[: stream.numel() // 2]}
    moved = bits.clone()
    moved[0, 0] += 5
    moved[-1, -1] -= 5
    yield "shifted offsets", True, {**tensors, "chunk_bits": moved}
    huge = bits.clone()
    huge[1, 0] = 32767
    yield "huge chunk", True, {**tensors, "chunk_bits": huge}
    negative = bits.clone()
    negative[0, 1] = -7
    yield "negative chunk", True, {**tensors, "chunk_bits": negative}
    lengths = tensors["code_lengths"].clone()
    for bad in (0, 13, 1):
        broken = lengths.clone()
        broken[-1] = bad
        yield f"length {bad}", True, {**tensors, "code_lengths": broken}
    swapped = tensors["code_values"].flip(0).contiguous()
    yield "unsorted table", True, {**tensors, "code_values": swapped}
    yield "wrong dtype", True, {**tensors, "chunk_bits": bits.to(torch.int32)}
    yield "random table", False, {**tensors, "code_lengths": torch.from_numpy(
        rng.integers(0, 256, size=lengths.numel()).astype(np.uint8))}


def test_fuzzed_layers_decode_or_raise_value_error():
    rng = np.random.default_rng(0)
    z = laplace_codes((6, 64), 6.0, 1, outliers=[((0, 0), 5000)])
    tensors = encode_hptq(z, 1.0, 16)
    for what, detectable, bad in mutations(tensors, rng):
        try:
            z_bad = decode_hptq(bad, 64)
        except ValueError as err:
            assert str(err), what
            continue
        assert not detectable, f"{what}: not detected"
        assert z_bad.shape == z.shape and z_bad.dtype == torch.int32


def test_corrupt_chunk_is_named():
    z = laplace_codes((4, 64), 3.0, 0)
    tensors = encode_hptq(z, 1.0, 16)
    bits = tensors["chunk_bits"].clone()
    bits[2, 1] += 1
    bits[2, 2] -= 1
    with pytest.raises(ValueError, match=r"row 2, chunk column 1"):
        decode_hptq({**tensors, "chunk_bits": bits}, 64)
