"""HPTQ: one scale per matrix, canonical length-limited Huffman codes in row chunks
(docs/format.md §3). Pack/decode/reference/TP import torch and numpy only; the GPU kernel
(Gluon: decode-GEMV and decode) lives in gemv.py over the load-time lane layout of lanes.py /
prepare.py, dispatched by linear.py."""
from babai_kernels.hptq.pack import (check_hptq_tensors, choose_chunk_cols, coded_bits, decode_hptq,
                               dequantize_hptq, encode_hptq, hptq_meta)
from babai_kernels.hptq.linear import hptq_linear
from babai_kernels.hptq.prepare import PreparedHPTQ, prepare_hptq
from babai_kernels.hptq.reference import hptq_linear_reference
from babai_kernels.hptq.tp import slice_cols, slice_rows

__all__ = ["check_hptq_tensors", "choose_chunk_cols", "coded_bits", "decode_hptq",
           "dequantize_hptq", "encode_hptq", "hptq_linear", "hptq_meta", "PreparedHPTQ", "prepare_hptq",
           "hptq_linear_reference", "slice_cols", "slice_rows"]
