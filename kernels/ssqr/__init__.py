"""SSQR: packed format (docs/format.md §2), torch reference, TP slicing, Triton kernels."""
from babai_kernels.ssqr.linear import PreparedSSQR, prepare_ssqr, ssqr_linear
from babai_kernels.ssqr.pack import pack_codes, pack_ssqr, ssqr_meta, unpack_codes, unpack_ssqr
from babai_kernels.ssqr.reference import dequantize_ssqr, ssqr_linear_reference
from babai_kernels.ssqr.tp import concat_rows, slice_cols, slice_rows

__all__ = ["PreparedSSQR", "prepare_ssqr", "ssqr_linear", "pack_codes", "pack_ssqr", "ssqr_meta",
           "unpack_codes", "unpack_ssqr", "dequantize_ssqr", "ssqr_linear_reference",
           "concat_rows", "slice_cols", "slice_rows"]
