"""Copies of a manifest's utterances at a phone line's sample rate, and their manifest, to
measure how a model reads narrowband speech:

    python recipes/synthetic/narrowband.py --manifest corpora/synth/test_seen.jsonl \
        --out exp/narrowband/test_seen --limit 300
    conformer-asr evaluate --manifest exp/narrowband/test_seen/manifest.jsonl

Each utterance is resampled (soxr, as the transcriber resamples) to ``--rate`` Hz and
written as 16-bit WAV; the transcriber resamples it back to 16 kHz, with nothing left
above half of ``--rate``.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import soundfile as sf

from conformer_asr.audio.io import load_audio
from conformer_asr.files import write_atomically


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--manifest", type=Path, required=True,
                        help='{"id", "audio", "text"} lines')
    parser.add_argument("--out", type=Path, required=True, help="folder for the copies")
    parser.add_argument("--rate", type=int, default=8000, help="sample rate of the copies (Hz)")
    parser.add_argument("--limit", type=int, default=None, help="the first N utterances only")
    args = parser.parse_args(argv)
    lines = args.manifest.read_text().splitlines()[: args.limit]
    args.out.mkdir(parents=True, exist_ok=True)
    records = []
    for line in lines:
        record = json.loads(line)
        # an absolute path stays itself under "/"
        samples = load_audio(args.manifest.parent / record["audio"], target_rate=args.rate)
        copy = args.out / f"{record['id']}.wav"
        sf.write(copy, samples, args.rate, subtype="PCM_16")
        records.append(json.dumps({**record, "audio": copy.name}) + "\n")
    write_atomically(args.out / "manifest.jsonl", "".join(records))
    print(f"{len(records)} utterances at {args.rate} Hz -> {args.out / 'manifest.jsonl'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
