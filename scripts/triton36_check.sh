#!/usr/bin/env bash
# The lent GPU image's Triton (3.6) against the project's (>= 3.9), shown without a GPU:
#   bash scripts/triton36_check.sh
# 1. builds .venv-gpuimage if needed (scripts/mirror_venv.sh: Python 3.12, torch 2.11, Triton 3.6,
#    transformers 5.17, no vLLM);
# 2. compiles the GPU check's kernels for sm_90 with each Triton and counts their SASS loops
#    (benchmarks/triton_versions.py compile): Triton 3.6 fails on the HPTQ Gluon kernel and
#    lengthens the SSQR loop;
# 3. reads the AOT bundle's cubins (kernels/aot_sm90.zip, built with Triton 3.9) in the 3.6 venv:
#    same loops as 3.9's compile;
# 4. writes benchmarks/results/kernels_static_versions.{json,md} and prints the table;
# 5. runs tests/test_aot.py in the 3.6 venv (the route is AOT there; the tests that recompile
#    with Triton >= 3.9 skip) and the runtime's route decision.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
NEW=${NEW_PYTHON:-.venv/bin/python}
OLD=.venv-gpuimage/bin/python
bash scripts/mirror_venv.sh
D=$(mktemp -d /tmp/triton36_check.XXXXXX)
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" TRITON_DEFAULT_FP_FUSION=1
"$NEW" -m benchmarks.triton_versions compile --dir "$D" >"$D/new.log" 2>&1 || { cat "$D/new.log"; exit 1; }
"$OLD" -m benchmarks.triton_versions compile --dir "$D" >"$D/old.log" 2>&1 || { cat "$D/old.log"; exit 1; }
"$OLD" -m benchmarks.triton_versions bundle --dir "$D"
"$NEW" -m benchmarks.triton_versions report --dir "$D"
"$OLD" - <<'PY'
import torch, triton
from babai_kernels import aot, common
from babai_kernels.hptq.gemv import launch_reason
print(f"triton {triton.__version__}: kernels on CUDA launch by",
      "AOT cubins" if aot.use_aot(torch.device("cuda")) else "Triton's JIT",
      f"({len(aot.bundle().variants)} variants); gluon_available() = {common.gluon_available()};",
      f"HPTQ K=4096 bf16: {launch_reason(4096, torch.bfloat16, torch.device('cuda')) or 'served'}")
PY
"$OLD" -m pytest -q -p no:cacheprovider tests/test_aot.py
