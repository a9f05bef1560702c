#!/usr/bin/env bash
# Build .venv-gpuimage: a venv that mirrors the lent GPU image's Python packages (no GPU here).
#   bash scripts/mirror_venv.sh            # idempotent: exits at once when the stamp matches
# The image (notes/anchors.md §10.3): Python 3.12.3, torch 2.11.0+cu130, Triton 3.6.0,
# transformers 5.17, CuPy 14 (cupy-cuda13x), safetensors, numpy; no vLLM.
# Here: Python 3.12.1 (pyenv; PYTHON overrides), torch==2.11.0 from PyPI, which is the same
# +cu130 build as the image's (download.pytorch.org's CPU wheel is not reachable from this box;
# the CUDA build imports and runs on CPU without a driver), with its nvidia-* dependencies;
# triton==3.6.0; transformers==5.17.*; cupy-cuda13x==14.* (imports without a GPU). The project
# is put on the path by a .pth file (no editable install: the image gets no pip install either).
# /etc/xdg/pip caps torch (a constraint, torch<=2.14.1 here); 2.11 is inside the cap, and the
# constraint is left alone.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

PYTHON=${PYTHON:-/root/.pyenv/versions/3.12.1/bin/python}
VENV=.venv-gpuimage
STAMP=$VENV/.mirror-stamp
PACKAGES=(torch==2.11.0 triton==3.6.0 "transformers==5.17.*" safetensors "numpy<2.6"
          "cupy-cuda13x==14.*" pytest)

key=$({ cat scripts/mirror_venv.sh; "$PYTHON" --version; } | sha256sum | cut -d' ' -f1)
if [[ -x $VENV/bin/python && -f $STAMP && $(cat "$STAMP") == "$key" ]]; then
    echo "mirror_venv: $VENV is up to date"
    exit 0
fi
[[ -x $VENV/bin/python ]] || "$PYTHON" -m venv "$VENV"
rm -f "$STAMP"
"$VENV/bin/python" -m pip install -q "${PACKAGES[@]}"
if "$VENV/bin/python" -c "import vllm" 2>/dev/null; then
    echo "mirror_venv: vllm is importable in $VENV, the image has none" >&2
    exit 1
fi
# the project's packages under their installed names, as benchmarks/gpu_check.sh does on the image
site=$("$VENV/bin/python" -c "import sysconfig; print(sysconfig.get_paths()['purelib'])")
mkdir -p "$VENV/babai_path"
for pair in kernels:babai_kernels quantizer:babai_quantizer serve:babai_serve; do
    ln -sfn "$PWD/${pair%%:*}" "$VENV/babai_path/${pair##*:}"
done
printf '%s\n%s\n' "$PWD/$VENV/babai_path" "$PWD" > "$site/babai_mirror.pth"
"$VENV/bin/python" - <<'PY'
import sys, torch, triton, transformers, numpy
try:
    import cupy
    cp = cupy.__version__
except Exception as e:  # noqa: BLE001  (recorded, not fatal: the GPU check does not need CuPy)
    cp = f"not importable ({type(e).__name__})"
print(f"mirror_venv: python {sys.version.split()[0]}, torch {torch.__version__}, "
      f"triton {triton.__version__}, transformers {transformers.__version__}, "
      f"numpy {numpy.__version__}, cupy {cp}")
PY
echo "$key" > "$STAMP"
