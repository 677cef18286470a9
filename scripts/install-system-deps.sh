#!/usr/bin/env bash
# Installs the Debian packages the corpus builder and its tests use (TTS voices,
# text sources, libsndfile, and ffmpeg, which reads m4a, webm and other formats
# libsndfile does not). Idempotent: does nothing when all are present.
set -euo pipefail
packages=(flite festival festvox-kallpc16k festvox-kdlpc16k festvox-us-slt-hts festlex-cmu
          espeak-ng libsndfile1 wordnet-base fortunes ffmpeg)
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
[ ${#missing[@]} -eq 0 ] && exit 0
echo "installing system packages: ${missing[*]}"
sudo=""
[ "$(id -u)" -ne 0 ] && sudo="sudo"
$sudo apt-get update -qq
DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
