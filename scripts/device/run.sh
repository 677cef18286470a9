#!/usr/bin/env bash
# The GPU checks, run on the lent GPU machine from the repository root, in one call
# of the device tool (its time is short: one call, then give the machine back):
#   run(command="bash scripts/device/run.sh", carry=[".whl"], timeout_s=560)
# after `bash scripts/device/prepare.sh` here. Installs the carried wheels and this
# checkout into the image's Python, then runs, each under its own time limit:
#   1. the benchmark table in bf16 for S and M, with training throughput (a row that
#      fails is reported and the others still run; the JSON is rewritten after each row),
#   2. the encoder forward captured in a CUDA graph against the eager one (opt-in rows),
#   3. `conformer-asr transcribe` of examples/ on the GPU and on the CPU,
#   4. the test suite in 8 processes of 2 threads, which trains on the GPU where a test
#      lets Lightning choose (-v: each test's result as it finishes, so a time limit
#      cannot hide which one failed).
# Logs, the JSON and summary.txt (each step's exit status and time) go to $OUT.
# DEVICE=cpu runs the same steps on a machine without a GPU (to try the kit).
# STEPS picks the steps (default "bench graphs transcribe tests"; "loss" is
# the RNN-T loss row alone), TEST_ARGS the tests' paths or -k, *_LIMIT each step's seconds.
set -uo pipefail
EXTRA_WHEELS="librosa srt webvtt-py"  # the dev extras, for the tests
. "$(dirname "$0")/setup.sh"

steps=${STEPS:-bench graphs transcribe tests}
has() { [[ " $steps " == *" $1 "* ]]; }
has bench && step bench "${BENCH_LIMIT:-240}" "$python" -m benchmarks.run --device "$device" --sizes s m \
  --train-batch 32 --json "$out/results-gpu.json"
has graphs && step graphs "${GRAPHS_LIMIT:-90}" "$python" -m benchmarks.run --device "$device" --sizes s m \
  --only graphs --json "$out/results-gpu-graphs.json"
examples=(examples/*.wav examples/*.flac)
has loss && step loss "${LOSS_LIMIT:-60}" "$python" -m benchmarks.run --device "$device" \
  --sizes s --only loss --json "$out/results-gpu-loss.json"
has transcribe && step transcribe "${TRANSCRIBE_LIMIT:-60}" bash -c "
  $cli transcribe --device $device ${examples[*]} > $out/transcripts-$device.txt &&
  $cli transcribe --device cpu ${examples[*]} > $out/transcripts-cpu.txt &&
  cat $out/transcripts-$device.txt && diff $out/transcripts-$device.txt $out/transcripts-cpu.txt"
# 8 workers of 2 threads each: with torch's default of one thread per core in each, the
# training and CLI tests had not finished in 300 s; with 2, they took 200 s (2026-12-04).
# `-o addopts=` drops pyproject's -q, which would cancel -v.
# shellcheck disable=SC2086  # TEST_ARGS is words
has tests && OMP_NUM_THREADS=2 step tests "${TEST_LIMIT:-120}" "$python" -m pytest -n 8 \
  -o addopts= -v -p no:cacheprovider --durations=15 --tb=short -rfE ${TEST_ARGS:-}
