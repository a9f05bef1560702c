"""Clipping-free formats of arXiv 2507.18553 §5 and their searches.

`quantize_ssqr` (b-bit inliers + float16 outliers, per-row scale multiplier bisected on the
outlier rate), `quantize_hptq` (one scale per matrix, unbounded codes, Huffman-coded; scale
bisected on the coded size) and `quantize_hrtn` (HPTQ's format with round-to-nearest).
Each returns a `FormatResult` whose `tensors` follow docs/format.md.
"""
from .hptq import quantize_hptq, quantize_hrtn
from .result import FormatResult, effective_bits
from .ssqr import quantize_ssqr

__all__ = ["FormatResult", "effective_bits", "quantize_hptq", "quantize_hrtn", "quantize_ssqr"]
