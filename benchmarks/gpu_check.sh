#!/usr/bin/env bash
# One prepared GPU check at Llama-3-8B shapes, sized for one 8-minute call on an H200.
#   bash benchmarks/gpu_check.sh              # on a CUDA machine, from anywhere
#   PYTHON=.venv-gpuimage/bin/python bash benchmarks/gpu_check.sh --dry-run   # here: up to the first CUDA call
# Needs python3 with torch, transformers and any Triton (no vLLM, no pip install): with Triton
# < 3.9 (the lent image has 3.6) the kernels launch from kernels/aot_sm90.zip, cubins compiled
# with Triton 3.9 (babai_kernels.aot); with Triton >= 3.9 through Triton's JIT. The bundle is not
# committed (2.4 MB of cubins): build it on the CPU machine first and carry it with the call:
#   .venv/bin/python -m benchmarks.aot_bundle     # then the device run with carry: kernels/aot_sm90.zip
# Stages, each under its own timeout, in $GPU_CHECK_SECONDS (default 480: one 8-minute call;
# give the device call ~540 s for start-up and the report); seconds:
#   env 20 · inputs 45 (HPTQ lane layouts, CPU; ~30 s on 2 cores here) · correctness 55 ·
#   speed 75 (benchmarks/gpu_stages.py) · e2e: what is left after reserving the quantizer's 105 s
#   and 5 s for the report (175 s when the stages before it use their whole timeouts, ~250 s when
#   they end early as expected; benchmarks/gpu_e2e.py: Llama-3-8B-shaped decode through
#   transformers_babai, bf16 vs SSQR-w4 vs HPTQ-3.3; it starts no compile that would end past
#   its --budget-s) · quantizer 105 (gpu_stages.py; the slowest known, last).
# Writes benchmarks/results/gpu_<gpu>.{json,md} (gpu_h200 on an H200; benchmarks/gpu_report.py)
# from the stages' JSON in $GPU_CHECK_DIR (default: a fresh temporary folder); --dry-run writes
# the report into that folder only. A stage that fails or times out is recorded and the next runs.
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [[ ! -f kernels/aot_sm90.zip ]] && ! "$PY" -c 'import triton, sys; sys.exit(tuple(map(int, triton.__version__.split(".")[:2])) < (3, 9))' 2>/dev/null; then
  echo "gpu_check: kernels/aot_sm90.zip is missing and this Triton cannot compile the kernels (needs >= 3.9):" >&2
  echo "  build it with '.venv/bin/python -m benchmarks.aot_bundle' on the CPU machine and carry it" >&2
  exit 2
fi
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
TOTAL=${GPU_CHECK_SECONDS:-480}
QUANTIZER=105
stage env 20 benchmarks.gpu_stages env
stage inputs 45 benchmarks.gpu_stages inputs
stage correctness 55 benchmarks.gpu_stages correctness
stage speed 75 benchmarks.gpu_stages speed
E2E=$((TOTAL - SECONDS - QUANTIZER - 5))
((E2E < 60)) && E2E=60
stage e2e "$E2E" benchmarks.gpu_e2e --budget-s "$((E2E - 8))"
stage quantizer "$QUANTIZER" benchmarks.gpu_stages quantizer
OUTDIR=benchmarks/results
[[ ${#DRY[@]} -gt 0 ]] && OUTDIR=$DIR
"$PY" -m benchmarks.gpu_report --stage-dir "$DIR" --out "$OUTDIR"
