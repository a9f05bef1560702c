"""benchmarks.quality's bit accounting and comparison (issue 15): resident bits from the runtime
layout, GPTQ interpolation and the ratio of perplexity increases."""
import argparse
import json
import math

import pytest
import torch

from babai_kernels.runtime import RESIDUAL_ENTRY_BYTES
from babai_quantizer.formats.registry import FORMAT_QUANTIZERS
from babai_quantizer.options import QuantizeOptions
from benchmarks.quality import ROWS, _options, gptq_bits
from benchmarks.quality_bits import gpu_resident_bytes, resident_bytes
from benchmarks.quality_report import gptq_envelope, interpolate, ratios, write_results


@pytest.fixture(scope="module")
def layer():
    g = torch.Generator().manual_seed(0)
    X = torch.randn(512, 192, generator=g) @ (torch.eye(192) + 0.1 * torch.randn(192, 192, generator=g))
    return torch.randn(64, 192, generator=g) * 0.02, X.T @ X / 512


def quantize(layer, **spec):
    W, H = layer
    options = QuantizeOptions(**spec)
    return FORMAT_QUANTIZERS[options.format](W, H, None, options, 1), options


def test_gptq_resident_bits_widen_codes_and_zeros_to_four(layer):
    r, o = quantize(layer, format="gptq", bits=3, group_size=64)
    assert r.effective_bits == pytest.approx(gptq_bits(3, 64))
    assert resident_bytes("gptq", r.tensors, 64, 192, 3) * 8 / (64 * 192) == pytest.approx(gptq_bits(4, 64))


def test_ssqr_resident_bits_follow_the_formula(layer):
    r, o = quantize(layer, format="ssqr", bits=3, group_size=64, outlier_rate=0.02, rate_mode="cap")
    n, k = 64, 192
    nnz = int((r.tensors["outlier_vals"] != 0).sum())
    perm = 0 if torch.equal(r.tensors["perm"].long(), torch.arange(k)) else 4 * k
    expected = n * k * 4 / 8 + n * (k // 64) * 2 + (RESIDUAL_ENTRY_BYTES * nnz + 4 * (n + 1) if nnz else 0) + perm
    assert resident_bytes("ssqr", r.tensors, n, k) == pytest.approx(expected)


def test_hptq_resident_bits_count_one_scale_per_row(layer):
    r, o = quantize(layer, format="hptq", target_bits=3.3)
    got = resident_bytes("hptq", r.tensors, 64, 192)
    assert 64 * 192 * 4 / 8 + 64 * (2 + 4) <= got < 64 * 192 * 8 / 8 + 64 * (2 + 4) + 4 * 65 + 8 * 64 * 192


def test_gpu_resident_bits_count_the_kernel_layouts(layer):
    """HPTQ on the GPU: the Huffman lane layout (payload + lane starts + 4 KB table), well under
    its CPU dense-code layout; SSQR: the prepared kernel tensors (b-bit codes, no widening)."""
    from babai_kernels.hptq.lanes import LOOK_AHEAD_WORDS, build_lane_layout
    from babai_kernels.hptq.pack import decode_hptq
    r, _ = quantize(layer, format="hptq", target_bits=3.3)
    lanes = build_lane_layout(decode_hptq(r.tensors, 192))
    got = gpu_resident_bytes("hptq", r.tensors, 64, 192)
    assert got == (lanes.payload_bits + 31) // 32 * 4 + LOOK_AHEAD_WORDS * 4 + 4 * lanes.bases.numel() \
        + 2 * lanes.offsets.numel() + 4 * 1024 + 4
    s, _ = quantize(layer, format="ssqr", bits=3, group_size=64, outlier_rate=0.01)
    slots = s.tensors["outlier_cols"].numel()                  # ELL: int16 column + fp16 value each
    ssqr = gpu_resident_bytes("ssqr", s.tensors, 64, 192)
    assert ssqr >= 64 * 192 * 3 / 8 + 64 * 3 * 2 + 192 * 4 + slots * 4
    assert ssqr <= 64 * 192 * 3 / 8 + 64 * 3 * 2 + 192 * 4 + slots * 4 + 64   # + split-K counters


def test_ratio_interpolates_gptq_linearly_in_bits():
    def row(fmt, bits, ppl):
        return {"spec": {"format": fmt}, "effective_bits": bits, "resident_bits": bits, "ppl": ppl}
    rows = {"base": {"spec": None, "effective_bits": 16, "resident_bits": 16, "ppl": 10.0},
            "g3": row("gptq", 3.0, 20.0), "g4": row("gptq", 4.0, 12.0),
            "g-worse": row("gptq", 3.5, 30.0),                   # dominated: not on the envelope
            "s": row("ssqr", 3.5, 13.0), "far": row("hptq", 5.0, 11.0)}
    assert gptq_envelope(rows, "effective_bits") == [(3.0, 10.0), (4.0, 2.0)]
    assert interpolate(gptq_envelope(rows, "effective_bits"), 3.5) == pytest.approx(6.0)
    r = ratios(rows)
    assert r["s"]["effective"] == pytest.approx(3.0 / 6.0)
    assert r["far"]["effective"] is None


def test_rows_are_valid_options():
    for name, spec in ROWS.items():
        if spec is not None:
            QuantizeOptions(**_options(spec)).validate()
    assert math.isclose(gptq_bits(4, 64), 4.3125)


def test_rows_with_their_own_calibration_compare_with_gptq_on_the_same_calibration():
    """A c128 row's ratio uses only the c128 GPTQ rows (and the default rows only the default GPTQ rows)."""
    def row(spec, bits, ppl):
        return {"spec": spec, "effective_bits": bits, "resident_bits": bits, "gpu_resident_bits": bits, "ppl": ppl}
    rows = {"base": row(None, 16, 10.0),
            "gptq-w3g64": row({"format": "gptq"}, 3.0, 20.0), "gptq-w4g64": row({"format": "gptq"}, 4.0, 12.0),
            "gptq-w3g64-c128": row({"format": "gptq", "nsamples": 128}, 3.0, 18.0),
            "gptq-w4g64-c128": row({"format": "gptq", "nsamples": 128}, 4.0, 11.0),
            "hptq": row({"format": "hptq"}, 3.5, 12.0),
            "hptq-c128": row({"format": "hptq", "nsamples": 128}, 3.5, 12.0)}
    r = ratios(rows)
    assert r["hptq"]["effective"] == pytest.approx(2.0 / 6.0)      # GPTQ Δ at 3.5 bits: (10 + 2) / 2
    assert r["hptq-c128"]["effective"] == pytest.approx(2.0 / 4.5)  # c128 GPTQ Δ at 3.5: (8 + 1) / 2


def test_results_are_written_under_the_given_stem(tmp_path):
    """write_results: <stem>.json holds the rows and ratios, <stem>.md one table line per row."""
    def row(name, spec, bits, ppl):
        return {"row": name, "spec": spec, "effective_bits": bits, "resident_bits": bits, "gpu_resident_bits": bits,
                "ppl": ppl, "scored_tokens": 100, "eval_windows": 1, "quantize_seconds": 1.0}
    rows = {"base": row("base", None, 16, 10.0), "gptq-w3g64": row("gptq-w3g64", {"format": "gptq"}, 3.0, 20.0),
            "gptq-w4g64": row("gptq-w4g64", {"format": "gptq"}, 4.0, 12.0),
            "hptq": row("hptq", {"format": "hptq"}, 3.5, 12.0)}
    args = argparse.Namespace(nsamples=16, seqlen=512, max_windows=1)
    write_results(rows, ["missing-row"], args, "cmd", tmp_path / "q")
    saved = json.loads((tmp_path / "q.json").read_text())
    assert [r["row"] for r in saved["rows"]] == list(rows)
    assert saved["ratios"]["hptq"]["effective"] == pytest.approx(2.0 / 6.0)
    table = (tmp_path / "q.md").read_text()
    assert "| hptq | 3.500 | 3.500 | 3.500 | 12.000 | +2.000 | 33% |" in table
    assert "missing-row" in table


def test_lever_table_compares_each_lever_with_the_default():
    """quality_issue23.lever_table: one line per lever row present, Δ against hptq-<t>-ldl-fisher (the reference)."""
    from benchmarks.quality_issue23 import lever_table

    def row(name, ppl):
        return {"row": name, "effective_bits": 3.3, "gpu_resident_bits": 3.5, "ppl": ppl, "quantize_seconds": 9.0}
    results = {"rows": [row("base", 10.0), row("hptq-3.3", 14.0), row("hptq-3.3-ldl-fisher", 12.5),
                        row("hptq-3.3-ldl-fisher-ft", 12.0), row("hptq-4.3", 11.0)],
               "ratios": {"hptq-3.3-ldl-fisher-ft": {"effective": 0.2, "gpu": None}}}
    lines, entries = lever_table(results, "3.3")
    assert [e["row"] for e in entries] == ["hptq-3.3", "hptq-3.3-ldl-fisher", "hptq-3.3-ldl-fisher-ft"]
    assert [e["vs_default"] for e in entries] == pytest.approx([1.5, 0.0, -0.5])
    assert ("| hptq-3.3-ldl-fisher-ft | **CLI default**: reference + float (Qronos) target | 3.300 | 3.500 | 12.000 "
            "| -0.500 | 20.0% | – | 9 |") in lines
