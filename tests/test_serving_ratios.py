"""benchmarks/serving_cpu's ratios: against the bf16 row, measured first and again after every other row
(the box drifts between minutes), the baseline is the mean of its two measurements."""
from __future__ import annotations

import pytest

from benchmarks import serving_cpu


def _row(tok1, tok8, ttft, prefill=None):
    runs = {"1": {"decode_tok_s": tok1, "median_ttft_ms": ttft}, "8": {"decode_tok_s": tok8, "median_ttft_ms": 6 * ttft}}
    return {"runs": runs, **({"prefill": {"median_ttft_ms": prefill}} if prefill else {})}


def test_ratios_use_the_mean_of_the_bracketing_baseline_runs():
    rows = {"bf16": _row(40.0, 260.0, 50.0, 1600.0), "hptq-4.3": _row(55.0, 286.0, 60.0, 1650.0)}
    rows["bf16"]["again"] = _row(44.0, 240.0, 54.0, 1700.0)
    serving_cpu.add_ratios(rows)
    r = rows["hptq-4.3"]["ratios"]["bf16"]
    assert r["decode_tok_s_c1"] == pytest.approx(55 / 42) and r["decode_tok_s_c8"] == pytest.approx(286 / 250)
    assert r["median_ttft_ms_c1"] == pytest.approx(60 / 52) and r["prefill_ttft_ms"] == pytest.approx(1650 / 1650)
    assert rows["bf16"]["ratios"]["bf16"]["decode_tok_s_c1"] == pytest.approx(40 / 42)
    assert rows["bf16"]["again"]["ratios"]["bf16"]["decode_tok_s_c1"] == pytest.approx(44 / 42)


def test_without_a_second_run_the_first_is_the_baseline():
    rows = {"bf16": _row(40.0, 260.0, 50.0, 1600.0), "ssqr-w4": _row(50.0, 270.0, 65.0, 1700.0)}
    serving_cpu.add_ratios(rows)
    assert rows["ssqr-w4"]["ratios"]["bf16"]["decode_tok_s_c1"] == pytest.approx(50 / 40)
    assert rows["ssqr-w4"]["ratios"]["bf16"]["prefill_ttft_ms"] == pytest.approx(1700 / 1600)
    assert rows["bf16"]["ratios"]["bf16"]["decode_tok_s_c8"] == 1.0
