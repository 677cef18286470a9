"""A dev set of voices that neither training nor the test sets use, from `dev`'s sentences:

    python recipes/synthetic/dev_unseen.py --corpus corpora/synth --out corpora/synth/dev_unseen \
        --limit 1000
    conformer-asr tune --manifest corpora/synth/dev_unseen/manifest.jsonl --lm-weights 0.7,0.9

The corpus's `dev` holds the training voices only, so settings that matter for voices a
model never heard (the LM weight, test-time adaptation) were chosen on `test_unseen`.
This script has the first ``--limit`` `dev` sentences read again, in turn, by the voices
of ``DEV_UNSEEN_VOICES`` (`conformer_asr.data.synth.voices`): espeak-ng variants the
inventory never uses, in accents it trains on, and flite voices at another pitch and
speaking rate. (The engines offer no other English voice: the held-out flite `rms` and
festival `ked` have no counterpart here.) The sentences stay out of the training audio
and of the LM's text, as `dev`'s do. Audio is conditioned as the corpus's is (16 kHz,
trimmed, peak-normalised FLAC); licences are the corpus's (`LICENSES.md`).
"""

from __future__ import annotations

import argparse
import json
import random
import sys
from pathlib import Path

from conformer_asr.audio.io import SAMPLE_RATE
from conformer_asr.data.synth.engines import EngineError, Synthesiser
from conformer_asr.data.synth.text import load_sentences
from conformer_asr.data.synth.voices import DEV_UNSEEN_VOICES
from conformer_asr.data.synth.worker import condition, write_flac
from conformer_asr.files import write_atomically


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--corpus", type=Path, required=True,
                        help="a `conformer-asr synth` folder (its dev.jsonl)")
    parser.add_argument("--out", type=Path, required=True, help="folder for audio and manifest")
    parser.add_argument("--limit", type=int, default=None, help="the first N dev sentences only")
    parser.add_argument("--seed", type=int, default=0, help="seed of the voices' order")
    args = parser.parse_args(argv)
    try:
        dev = [json.loads(line) for line in (args.corpus / "dev.jsonl").read_text().splitlines()]
    except OSError as error:
        parser.error(f"{args.corpus / 'dev.jsonl'}: {error.strerror}")
    wheel = [voice for voice in DEV_UNSEEN_VOICES for _ in range(voice.weight)]
    random.Random(args.seed).shuffle(wheel)
    spoken = {sentence.text: sentence.spoken for sentence in load_sentences()}
    (args.out / "audio").mkdir(parents=True, exist_ok=True)
    synthesiser, records, failed = Synthesiser(), [], 0
    try:
        for i, record in enumerate(dev[: args.limit]):
            voice = wheel[i % len(wheel)]
            try:
                samples = condition(*synthesiser.synthesize(
                    voice, spoken.get(record["text"], record["text"])))
            except EngineError as error:
                print(f"{record['id']}: {voice.id}: {error}", file=sys.stderr)
                failed += 1
                continue
            audio = f"audio/{record['id']}.flac"
            write_flac(args.out / audio, samples)
            records.append({**record, "audio": audio,
                            "duration": round(len(samples) / SAMPLE_RATE, 3),
                            "voice": voice.id, "engine": voice.engine})
    finally:
        synthesiser.close()
    write_atomically(args.out / "manifest.jsonl",
                     "".join(json.dumps(record) + "\n" for record in records))
    voices = len({record["voice"] for record in records})
    print(f"{len(records)} utterances, {voices} voices -> {args.out / 'manifest.jsonl'}"
          + (f" ({failed} failed)" if failed else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
