"""Runs the Triton kernel suites (tests/interpret/) in a subprocess with TRITON_INTERPRET=1.

The interpreter must be chosen before `import triton`, so it cannot be switched on inside this
session without forcing every other test (and vLLM engines started from it) onto the slow path.
"""
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("suite", ["test_interp_ssqr.py", "test_interp_hptq.py", "test_interp_hptq_dense.py",
                                   "test_interp_ssqr_op.py"])
def test_triton_interpreter_suite(suite):
    pytest.importorskip("triton")
    env = dict(os.environ, TRITON_INTERPRET="1")
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                           f"tests/interpret/{suite}"], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=900)
    summary = proc.stdout.strip().splitlines()[-1] if proc.stdout.strip() else ""
    print(f"{suite}: {summary}")
    assert proc.returncode == 0, proc.stdout[-6000:] + proc.stderr[-3000:]
    assert " passed" in summary and "skipped" not in summary
