"""How a model reads silence: WER on test clips alone, padded and joined into one recording.

    python recipes/synthetic/pauses.py                      # the bundled model
    python recipes/synthetic/pauses.py --model exp/default-5/model --lm none

For the first --count utterances of --manifest (of one --voice if given), prints the
WER of each utterance alone as it is; with --pad seconds of digital silence before and
after; with 1 s of -60 dBFS white noise before and after and under the speech; and of
all of them joined into one recording with --pad seconds of silence between them
(transcribed as any long recording: cut in its pauses). ``--lm`` is the model folder's
own LM and decoding when it has one ("auto"), an LM folder decoded with the bundled
model's settings, or "none" (greedy).

    python recipes/synthetic/pauses.py --count 1022 --write-joined hour

writes that joined recording as hour/joined.flac with a one-line manifest,
hour/joined.jsonl, for ``conformer-asr evaluate``, and transcribes nothing.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import jiwer
import numpy as np
import soundfile as sf

import conformer_asr
from conformer_asr.audio.io import SAMPLE_RATE, load_audio
from conformer_asr.inference.model_dir import BUNDLED_DIR, read_config
from conformer_asr.text.normalize import normalize_text

NOISE_RMS = 1e-3  # -60 dBFS


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=None, help="model folder (default: the bundled one)")
    parser.add_argument("--lm", default="auto", help='"auto", an LM folder, or "none"')
    parser.add_argument("--manifest", type=Path, default=Path("corpora/synth/test_unseen.jsonl"))
    parser.add_argument("--count", type=int, default=300)
    parser.add_argument("--pad", type=float, default=0.5, help="seconds of silence")
    parser.add_argument("--voice", help="only the utterances of this voice")
    parser.add_argument("--write-joined", type=Path, metavar="DIR",
                        help="write the joined recording and its manifest here, and stop")
    args = parser.parse_args(argv)

    with args.manifest.open() as f:
        rows = [row for row in map(json.loads, f) if args.voice in (None, row["voice"])]
    rows = rows[: args.count]
    clips = [load_audio(args.manifest.parent / row["audio"]) for row in rows]
    reference = " ".join(normalize_text(row["text"]) for row in rows)
    pad = np.zeros(round(args.pad * SAMPLE_RATE), dtype=np.float32)
    joined = np.concatenate([part for c in clips for part in (c, pad)])
    if args.write_joined:
        args.write_joined.mkdir(parents=True, exist_ok=True)
        sf.write(args.write_joined / "joined.flac", joined, SAMPLE_RATE)
        row = {"id": "joined", "audio": "joined.flac", "text": reference}
        (args.write_joined / "joined.jsonl").write_text(json.dumps(row) + "\n")
        print(f"{len(rows)} utterances, {len(joined) / SAMPLE_RATE:.0f} s: {args.write_joined}")
        return 0
    if args.lm in ("auto", "none"):
        model = conformer_asr.load_model(args.model, lm=None if args.lm == "none" else "auto")
    else:
        bundled = read_config(BUNDLED_DIR).decoding  # its settings, not its weights
        model = conformer_asr.load_model(args.model, lm=args.lm, options=bundled)
    rng = np.random.default_rng(0)
    second = np.zeros(SAMPLE_RATE, dtype=np.float32)

    def noisy(clip: np.ndarray) -> np.ndarray:
        padded = np.concatenate([second, clip, second])
        return (padded + NOISE_RMS * rng.standard_normal(len(padded))).astype(np.float32)

    conditions = {
        "as they are": clips,
        f"{args.pad:g} s of silence around": [np.concatenate([pad, c, pad]) for c in clips],
        "1 s of -60 dBFS noise around and under": [noisy(c) for c in clips],
        f"one recording, {args.pad:g} s between": [joined],
    }
    for name, audio in conditions.items():
        hypothesis = " ".join(model.transcribe(audio))
        print(f"{name:40s} WER {100 * jiwer.wer(reference, hypothesis):5.1f}%", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
