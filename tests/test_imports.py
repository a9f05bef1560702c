"""Every top-level package (and the CPU-side entry modules) imports without vllm installed."""
from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
MODULES = ["babai_quantizer", "babai_kernels", "vllm_babai", "babai_serve", "babai_kernels.common",
           "babai_kernels.contract", "babai_quantizer.assets", "babai_quantizer.assets.__main__",
           "babai_quantizer.evaluate", "babai_quantizer.cli", "babai_serve.demo"]

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


def test_installed_names_do_not_clash_with_pypi_packages(tmp_path):
    """Outside the repository, the project's folders import only under their unique names: the
    short folder names (`kernels` — Hugging Face's package used by transformers —, `quantizer`,
    `serve`) stay free for the distributions that own them."""
    probe = textwrap.dedent("""
        import importlib.util, json
        import babai_kernels, babai_quantizer, babai_serve, vllm_babai
        print(json.dumps({"ours": [m.__file__ for m in (babai_kernels, babai_quantizer, babai_serve)],
                          "short": [str(getattr(importlib.util.find_spec(n), "origin", None))
                                    for n in ("kernels", "quantizer", "serve")]}))
    """)
    proc = subprocess.run([sys.executable, "-c", probe], cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    found = json.loads(proc.stdout)
    assert found["ours"] == [str(REPO / d / "__init__.py") for d in ("kernels", "quantizer", "serve")]
    assert not any(origin.startswith(str(REPO)) for origin in found["short"]), found["short"]
