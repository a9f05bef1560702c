#!/usr/bin/env bash
# One prepared GPU check at Llama-3-8B shapes, sized for one 8-minute call on an H200.
#   bash benchmarks/gpu_check.sh              # on a CUDA machine, from anywhere
#   PYTHON=.venv-gpuimage/bin/python bash benchmarks/gpu_check.sh --dry-run   # here: up to the first CUDA call
# Needs python3 with torch, transformers and any Triton (no vLLM, no pip install): with Triton
# < 3.9 (the lent image has 3.6) the kernels launch from kernels/aot_sm90.zip, cubins compiled
# with Triton 3.9 (babai_kernels.aot); with Triton >= 3.9 through Triton's JIT.
# Stages (benchmarks/gpu_stages.py), each under its own timeout, the slowest last; seconds:
#   env 30 · inputs 60 (HPTQ lane layouts, CPU; ~30 s on 2 cores here) · correctness 75 · speed 110 ·
#   [e2e 60: python3 -m benchmarks.gpu_e2e --stage-dir DIR [--dry-run], run only when
#    benchmarks/gpu_e2e.py exists (issue 22's transformers decode; it writes DIR/e2e.json with
#    {"rows": [...], "info": {...}})] · quantizer 120 — 455 s in all.
# Writes benchmarks/results/gpu_<gpu>.{json,md} (gpu_h200 on an H200; benchmarks/gpu_report.py)
# from the stages' JSON in $GPU_CHECK_DIR (default: a fresh temporary folder); --dry-run writes
# the report into that folder only. A stage that fails or times out is recorded and the next runs.
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
DRY=()
[[ ${1:-} == --dry-run || ${DRY_RUN:-0} == 1 ]] && DRY=(--dry-run)
DIR=${GPU_CHECK_DIR:-$(mktemp -d /tmp/gpu_check.XXXXXX)}
mkdir -p "$DIR" .gpu_check_path
for pair in kernels:babai_kernels quantizer:babai_quantizer serve:babai_serve; do
  ln -sfn "$PWD/${pair%%:*}" ".gpu_check_path/${pair##*:}"
done
export PYTHONPATH="$PWD/.gpu_check_path:$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-$(nproc)} TRITON_DEFAULT_FP_FUSION=1
: >"$DIR/status.tsv"
stage() {  # name, timeout in seconds, python module, then its arguments
  local name=$1 limit=$2 module=$3 start=$SECONDS rc
  shift 3
  echo "== $name (timeout ${limit}s)"
  timeout "$limit" "$PY" -m "$module" "$@" --stage-dir "$DIR" "${DRY[@]}"
  rc=$?
  printf '%s\t%s\t%s\t%s\n' "$name" "$rc" "$((SECONDS - start))" "$limit" >>"$DIR/status.tsv"
  echo "-- $name: rc=$rc, $((SECONDS - start)) s"
}
stage env 30 benchmarks.gpu_stages env
stage inputs 60 benchmarks.gpu_stages inputs
stage correctness 75 benchmarks.gpu_stages correctness
stage speed 110 benchmarks.gpu_stages speed
if [[ -f benchmarks/gpu_e2e.py ]]; then   # the end-to-end decode stage hook (issue 22)
  stage e2e 60 benchmarks.gpu_e2e
fi
stage quantizer 120 benchmarks.gpu_stages quantizer
OUTDIR=benchmarks/results
[[ ${#DRY[@]} -gt 0 ]] && OUTDIR=$DIR
"$PY" -m benchmarks.gpu_report --stage-dir "$DIR" --out "$OUTDIR"
