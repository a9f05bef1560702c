#!/usr/bin/env bash
# One prepared check for a CUDA machine (torch + triton + transformers; vllm optional, not needed).
#   bash benchmarks/gpu_check.sh            # from the repository root; about 5-8 minutes
# 1. makes the packages importable (pip install -e . --no-deps, or PYTHONPATH fallback),
# 2. runs the Triton kernel tests on the GPU against the torch reference (tests/interpret with
#    BABAI_TEST_DEVICE=cuda) plus the real-shape SSQR check below,
# 3. runs benchmarks/kernel_speed.py at the issue-14 shapes, M = 1, 16, 128, writing
#    benchmarks/results/kernels_<gpu>.{json,md} (SSQR) and benchmarks/results/hptq/ (HPTQ: its
#    load-time re-encoding runs on the CPU, so only the two smaller shapes fit the time budget).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python}
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-4}
if ! $PY -c "import babai_kernels" 2>/dev/null; then
  $PY -m pip install -q --no-build-isolation --no-deps -e . 2>/dev/null || {
    mkdir -p .gpu_check_path
    ln -sfn "$PWD/kernels" .gpu_check_path/babai_kernels
    ln -sfn "$PWD/quantizer" .gpu_check_path/babai_quantizer
    ln -sfn "$PWD/serve" .gpu_check_path/babai_serve
    export PYTHONPATH="$PWD/.gpu_check_path:$PWD:${PYTHONPATH:-}"
  }
fi
export PYTHONPATH="$PWD:${PYTHONPATH:-}"
$PY - <<'PY'
import torch, triton
assert torch.cuda.is_available(), "gpu_check.sh needs a CUDA GPU"
print(torch.cuda.get_device_name(), "torch", torch.__version__, "triton", triton.__version__)
PY
echo "== kernel tests on the GPU (tests/interpret, BABAI_TEST_DEVICE=cuda)"
BABAI_TEST_DEVICE=cuda timeout 240 $PY -m pytest -q -x -p no:cacheprovider tests/interpret
echo "== real shapes against the torch reference"
timeout 150 $PY - <<'PY'
import torch
from babai_kernels.ssqr import prepare_ssqr, ssqr_linear
from babai_kernels.ssqr.linear import _linear_torch
from benchmarks.kernel_speed import random_ssqr_tensors
torch.manual_seed(0)
dev = torch.device("cuda")
cases = [((4096, 4096), bits, m, dt) for bits in (4, 3, 2) for m in (1, 16, 128)
         for dt in (torch.bfloat16,) + ((torch.float16,) if m == 1 else ())]
cases += [((14336, 4096), 4, m, torch.bfloat16) for m in (1, 16)]
for (k, n), bits, m, dt in cases:
    p = prepare_ssqr(random_ssqr_tensors(n, k, bits, 128, 0.01, dev), dev)
    x = torch.randn(m, k, device=dev, dtype=dt)
    got, want = ssqr_linear(x, p).float(), _linear_torch(x, p, None).float()
    err = ((got - want).abs().max() / want.abs().max()).item()
    assert err < 2e-2 and not p.locks.any(), (k, n, bits, m, dt, err)
    print(f"K={k} N={n} {bits}-bit M={m} {dt}: max rel err {err:.1e}")
PY
echo "== speed (benchmarks/kernel_speed.py): SSQR at all shapes, HPTQ at the two smaller ones"
timeout 300 $PY -m benchmarks.kernel_speed --m 1 16 128 --cases ssqr
timeout 150 $PY -m benchmarks.kernel_speed --m 1 16 128 --cases hptq --shapes 4096x4096 '4096->14336' \
  --out benchmarks/results/hptq
