#!/usr/bin/env bash
# Run here (after `make system-deps`), before training on the lent GPU machine: packs the
# corpus builder's Debian packages (TTS engines and voices, text sources) with the shared
# libraries they load into .tts/root.tar.xz (git-ignored), so that `conformer-asr synth`
# runs there, on its 16 cores, where nothing can be installed from a package index.
# The machine unpacks it over / keeping every file it already has (train.sh does):
#   tar -xJf .tts/root.tar.xz -C / --skip-old-files && ldconfig
set -euo pipefail
cd "$(dirname "$0")/../.."
packages=(flite libflite1 festival festvox-kallpc16k festvox-kdlpc16k festvox-us-slt-hts
          festlex-cmu festlex-poslex espeak-ng libespeak-ng1 espeak-ng-data libpcaudio0
          libsonic0 libestools2.5 wordnet-base fortunes fortunes-min)
# The C and C++ runtimes: the machine's own are newer, and must stay.
runtime='/(libc|libm|libpthread|libdl|librt|ld-linux-x86-64|libstdc\+\+|libgcc_s)\.so'
list=$(mktemp)
trap 'rm -f "$list"' EXIT
for package in "${packages[@]}"; do
  dpkg -L "$package" | while read -r path; do [ -f "$path" ] && echo "$path"; done
done >> "$list"
# Every library the engines load, and theirs (the PulseAudio and X11 chain of the audio
# output they never use, but which the dynamic linker needs all the same).
binaries=(/usr/bin/festival /usr/bin/espeak-ng)
mapfile -t flite_libraries < <(grep -E '/libflite[^/]*\.so\.[0-9.]+$' "$list")
mapfile -t espeak_libraries < <(grep -E '/libespeak-ng\.so\.[0-9.]+$' "$list")
ldd "${binaries[@]}" "${flite_libraries[@]}" "${espeak_libraries[@]}" \
  | awk '$2 == "=>" && $3 ~ /^\// {print $3}' | sort -u | grep -v -E "$runtime" \
  | while read -r library; do echo "$library"; readlink -f "$library"; done >> "$list"
# Left out, to fit the device tool's 64 MiB with the wheels and the checkout: the
# documentation, other languages' espeak dictionaries, the flite voices no Voice names
# (grapheme, indic, the talking clock) and WordNet's indexes (the builder reads its
# data.* files).
unused='^/usr/share/(doc|man|lintian)/|/espeak-ng-data/(([^e]|e[^n])[^/]*_dict)$|'
unused+='/libflite_cmu_(grapheme|indic|time)|^/usr/bin/flite|/wordnet/[^d]|/fortunes/.*\.(dat|u8)$'
mkdir -p .tts
sort -u "$list" | grep -v -E "$unused" | sed 's|^/||' > "$list.kept"
XZ_OPT=-9 tar -cJf .tts/root.tar.xz -C / -T "$list.kept"
echo "$(wc -l < "$list.kept") files, $(du -sh .tts/root.tar.xz | cut -f1), in .tts/root.tar.xz"
rm -f "$list.kept"
