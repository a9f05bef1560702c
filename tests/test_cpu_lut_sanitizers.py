"""The CPU kernel's own tests (tests/test_cpu_lut.py) under AddressSanitizer + UndefinedBehaviorSanitizer.

The kernel is rebuilt with `-fsanitize=address,undefined -fno-sanitize-recover=all` (BABAI_CPU_SANITIZE=1:
its own torch extension name, so it never replaces the normal build) and the tests run in a child
Python with the compiler's libasan preloaded (an uninstrumented python needs the runtime first), and
libstdc++ right after it (else ASan's `__cxa_throw` interceptor finds no real function and aborts on the
first C++ exception, i.e. on every refused argument).
Any sanitizer report aborts the child, so a clean run is: exit 0, every test passed, no report — and
the child's memory map shows the instrumented build and libasan were the ones loaded.
"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from babai_kernels import cpu_lut

TESTS = Path(__file__).with_name("test_cpu_lut.py")
CHILD = """
import sys, pytest
rc = pytest.main(["-q", "-p", "no:cacheprovider", {tests!r}])
maps = open("/proc/self/maps").read()
print("LOADED", {name!r} in maps, "libasan" in maps)
sys.exit(rc)
"""


def _runtime(lib: str) -> str | None:
    """The C++ compiler's copy of `lib` (e.g. libasan.so), or None."""
    cxx = os.environ.get("CXX", "c++")
    try:
        path = subprocess.run([cxx, f"-print-file-name={lib}"], capture_output=True, text=True, timeout=60).stdout.strip()
    except (OSError, subprocess.TimeoutExpired):
        return None
    return path if os.path.isabs(path) and os.path.exists(path) else None


@pytest.mark.slow
def test_kernel_tests_are_clean_under_address_and_undefined_behaviour_sanitizers():
    if cpu_lut.choose_isa(cpu_lut.host_features(), None)[0] is None:
        pytest.skip("this CPU cannot run the kernel")
    preload = [_runtime("libasan.so"), _runtime("libstdc++.so")]
    if None in preload:
        pytest.skip("the C++ compiler has no libasan (or libstdc++)")
    name = cpu_lut.build_name(cpu_lut.build_flags(sanitize=True), cpu_lut.host_features())
    env = {**os.environ, cpu_lut.SANITIZE_ENV: "1", "LD_PRELOAD": " ".join(preload),
           "ASAN_OPTIONS": "detect_leaks=0:abort_on_error=1", "UBSAN_OPTIONS": "print_stacktrace=1:halt_on_error=1"}
    env.pop(cpu_lut.ISA_ENV, None)
    r = subprocess.run([sys.executable, "-c", CHILD.format(tests=str(TESTS), name=name)], env=env,
                       capture_output=True, text=True, timeout=1500)
    out = r.stdout + r.stderr
    assert r.returncode == 0, out[-4000:]
    assert "LOADED True True" in r.stdout, out[-2000:]
    assert " passed" in r.stdout and "skipped" not in r.stdout.splitlines()[-2], out[-2000:]
    assert "runtime error" not in out and "AddressSanitizer" not in out, out[-4000:]
