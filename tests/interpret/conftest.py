"""Triton kernel suites. They need TRITON_INTERPRET=1 *before* triton is imported (or a CUDA GPU),
so an ordinary pytest session skips this folder and tests/test_triton_interpreter.py runs it in a
subprocess started with TRITON_INTERPRET=1. On a GPU machine: `pytest tests/interpret` with
BABAI_TEST_DEVICE=cuda."""
import os

if os.environ.get("TRITON_INTERPRET") != "1" and os.environ.get("BABAI_TEST_DEVICE") != "cuda":
    collect_ignore_glob = ["test_*.py"]
