"""Every top-level package (and the CPU-side entry modules) imports without vllm installed."""
from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
MODULES = ["babai_quantizer", "babai_kernels", "vllm_babai", "babai_serve",
           "babai_kernels.common", "babai_quantizer.assets", "babai_quantizer.assets.__main__", "babai_quantizer.evaluate", "babai_serve.demo"]

# Run in a fresh interpreter: `sys.modules["vllm"] = None` makes every `import vllm...` raise
# ModuleNotFoundError (and importlib.util.find_spec("vllm") return None), as if vllm were not installed.
PROBE = textwrap.dedent("""
    import importlib, sys
    sys.modules["vllm"] = None
    importlib.import_module(sys.argv[1])
    leaked = sorted(m for m, mod in sys.modules.items() if m.startswith("vllm.") or (m == "vllm" and mod))
    assert not leaked, f"vllm modules imported: {leaked}"
    print("ok")
""")


@pytest.mark.parametrize("module", MODULES)
def test_imports_without_vllm(module):
    proc = subprocess.run([sys.executable, "-c", PROBE, module], cwd=REPO, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0 and proc.stdout.strip() == "ok", proc.stderr[-3000:]


def test_probe_detects_vllm_imports(tmp_path):
    """The probe itself fails for a module that imports vllm."""
    (tmp_path / "needs_vllm.py").write_text("import vllm\n")
    proc = subprocess.run([sys.executable, "-c", PROBE, "needs_vllm"], cwd=tmp_path, capture_output=True, text=True)
    assert proc.returncode != 0 and "ModuleNotFoundError" in proc.stderr
