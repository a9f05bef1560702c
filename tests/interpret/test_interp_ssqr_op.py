"""The `babai::ssqr_linear` custom op under TRITON_INTERPRET=1: schema and fake implementation
(torch.library.opcheck runs the real kernel beside the fake one)."""
import os

import pytest
import torch

DEVICE = os.environ.get("BABAI_TEST_DEVICE", "cpu")
if DEVICE == "cpu" and os.environ.get("TRITON_INTERPRET") != "1":
    pytest.skip("needs TRITON_INTERPRET=1 at process start (run via tests/test_triton_interpreter.py)",
                allow_module_level=True)

from babai_kernels.ssqr import pack_ssqr, prepare_ssqr  # noqa: E402
from tests.test_ssqr_pack import random_layer  # noqa: E402


def test_custom_op_registration():
    p = prepare_ssqr(pack_ssqr(*random_layer(8, 64, 4, 32, seed=1), bits=4), DEVICE)
    x = torch.randn(3, 64, dtype=torch.bfloat16, device=DEVICE)
    torch.library.opcheck(torch.ops.babai.ssqr_linear.default,
                          (x, p.qcodes, p.scales, p.perm, p.outlier_cols, p.outlier_vals, p.locks,
                           None, p.bits, p.group_size, p.has_perm, p.has_outliers),
                          test_utils=("test_schema", "test_faketensor"))
