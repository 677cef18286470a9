#!/usr/bin/env bash
# Trains on from the bundled model on the lent GPU machine, in one call of the device tool:
#   run(command="bash scripts/device/train.sh", carry=[".whl", ".tts"], timeout_s=590)
# after `bash scripts/device/prepare.sh` and `bash scripts/device/pack-tts.sh` here.
#   1. unpacks the TTS engines and text sources (.tts/root.tar.xz) over / (keeping every
#      file the machine has) and builds the synthetic corpus on all its cores (the same
#      plan as recipes/synthetic: seed 0, HOURS of audio, default 50);
#   2. trains recipes/synthetic/default.yaml from the bundled model (init_from=default)
#      for TRAIN_SECONDS of wall-clock time (default 280), then stops it with SIGKILL, as
#      a killed run would be, and finishes it with the same command and max_steps set to
#      its last checkpoint (the run resumes there and averages its last checkpoints);
#   3. evaluates the bundled model and the new one, greedy, on test_unseen.
# While it trains, the GPU's utilisation (gpu-utilisation.csv) and the busiest processes
# (processes.log) are sampled, to tell whether the GPU or the loading workers bound it.
# Everything it writes (the model folder, the run's config, metrics and curves, each
# step's log) comes back in one archive, $OUT/run.tar: the device tool brings back only
# a few files of $OUT (8 on 2026-12-04, when the model folder's three were left out).
# Extra settings for the run: TRAIN_SET, words of --set key=value (defaults below).
set -uo pipefail
archive_dir=${OUT:-/tmp/device-out}
export OUT=$archive_dir/run
trap 'tar -cf "$archive_dir/run.tar" -C "$archive_dir" run && rm -rf "$OUT"' EXIT
. "$(dirname "$0")/setup.sh"
hours=${HOURS:-50}
workers=${WORKERS:-$(($(nproc) - 2))}
corpus=${CORPUS:-/tmp/corpus}
run_dir=${RUN_DIR:-/tmp/exp/gpu}

step unpack 60 tar -xJf .tts/root.tar.xz -C / --skip-old-files || exit 1
ldconfig
# A build stopped at its limit leaves whole manifest lines: train on what it made.
step synth "${SYNTH_LIMIT:-200}" "$cli" synth --out "$corpus" --hours "$hours" --jobs "$(nproc)" \
  --seed 0 --no-progress
[ -s "$corpus/train.jsonl" ] && [ -s "$corpus/dev.jsonl" ] || exit 1
cp "$corpus/summary.json" "$out/" 2>/dev/null
head -300 "$corpus/dev.jsonl" > "$corpus/dev_small.jsonl"

# Larger batches than the CPU recipe's 80 s (the GPU is idle most of a small step), a
# learning rate for them, silence padding and phone-band audio (as steps 2c and 2d) and
# VTLP.
# shellcheck disable=SC2206  # TRAIN_SET is words
settings=(init_from=default data.tokenizer=null "data.train=$corpus/train.jsonl"
          "data.dev=$corpus/dev_small.jsonl" "data.num_workers=$workers" "out_dir=$run_dir"
          data.max_duration=640 optim.peak_lr=0.0003 optim.warmup_steps=100 seed=5
          data.augment.pad_prob=0.5 "data.augment.pad_seconds=[0,1]" data.augment.band_prob=0.4
          "data.augment.vtlp=[0.9,1.1]"
          trainer.max_steps=1000000 trainer.checkpoint_every_steps=100
          trainer.val_every_steps=200 ${TRAIN_SET:-})
train=("$cli" train recipes/synthetic/default.yaml)
for setting in "${settings[@]}"; do train+=(--set "$setting"); done
# SIGKILL at the deadline: the run's checkpoints are written atomically, so the newest
# one is whole whatever the moment (the package's kill -9 test checks this).
seconds=${TRAIN_SECONDS:-280}
# What bounds the run, the GPU or the loading workers: the GPU's utilisation each second
# (where nvidia-smi is) and the busiest processes every 10 s, in the archive.
if command -v nvidia-smi >/dev/null; then
  nvidia-smi --query-gpu=timestamp,utilization.gpu,memory.used --format=csv -l 1 \
    > "$out/gpu-utilisation.csv" 2>&1 &
  sampler=$!
fi
# top's second frame: the CPU each process used over the last second
(while sleep 9; do top -b -n 2 -d 1 -o %CPU -w 150 -c | awk '/^top -/{n++} n==2' | head -30
 done) > "$out/processes.log" 2>&1 &
watcher=$!
step train "$((seconds + 30))" timeout -s KILL "$seconds" "${train[@]}"
kill "$watcher" ${sampler:-} 2>/dev/null
last=$(find "$run_dir/checkpoints" -name 'step-*.ckpt' 2>/dev/null \
       | sed -E 's/.*step-([0-9]+)\.ckpt/\1/' | sort -n | tail -1)
[ -n "$last" ] || { echo "no checkpoint was written"; exit 1; }
step finish 120 "${train[@]}" --set "trainer.max_steps=$last" || exit 1
cp -r "$run_dir/model" "$run_dir/config.yaml" "$run_dir/logs/metrics.csv" "$out/"
cp "$run_dir/curves.png" "$out/" 2>/dev/null
step evaluate 120 bash -c "
  for model in default $run_dir/model; do
    $cli evaluate --manifest $corpus/test_unseen.jsonl --model \$model --lm none --device $device
  done"
