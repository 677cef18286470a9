"""A real-speech check: Allison Smith's recordings of the Asterisk telephone system's
prompts (8 kHz, one speaker), as a manifest for ``conformer-asr evaluate``.

    apt-get install asterisk-core-sounds-en-wav asterisk-core-sounds-en
    python recipes/asterisk/prepare.py --out data/asterisk.jsonl
    conformer-asr evaluate --manifest data/asterisk.jsonl

The audio and transcripts stay where Debian installs them (CC BY-SA 3.0, not shipped
here); the manifest names them by absolute path. Left out: prompts whose transcript holds
figures (which the scorer drops, and the speaker says as words) or describes a sound
("[beep]"), and the spelled letters of ``letters/``.
"""

from __future__ import annotations

import argparse
import gzip
import json
import re
import sys
from pathlib import Path

from conformer_asr.files import write_atomically

SOUNDS = Path("/usr/share/asterisk/sounds/en_US_f_Allison")
TRANSCRIPTS = Path("/usr/share/doc/asterisk-core-sounds-en/core-sounds-en.txt.gz")
LICENCE = "CC-BY-SA-3.0"  # /usr/share/doc/asterisk-core-sounds-en/copyright


def prompts(transcripts: Path, sounds: Path) -> list[dict[str, str]]:
    """Manifest records for every usable prompt: ``NAME: TEXT`` lines (``;`` starts a
    comment) whose ``sounds/NAME.wav`` exists."""
    records = []
    with gzip.open(transcripts, "rt", encoding="utf-8", errors="replace") as lines:
        for line in lines:
            name, colon, text = line.partition(":")
            name, text = name.strip(), text.strip()
            audio = sounds / f"{name}.wav"
            if (not colon or line.startswith(";") or not text or re.search(r"[\d\[]", text)
                    or name.startswith("letters/") or not audio.is_file()):
                continue
            records.append({"id": name, "audio": str(audio), "text": text,
                            "speaker": "allison", "licence": LICENCE})
    return records


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True, help="manifest to write")
    parser.add_argument("--sounds", type=Path, default=SOUNDS, help="the recordings' folder")
    parser.add_argument("--transcripts", type=Path, default=TRANSCRIPTS,
                        help="core-sounds-en.txt.gz")
    args = parser.parse_args(argv)
    for path, package in [(args.sounds, "asterisk-core-sounds-en-wav"),
                          (args.transcripts, "asterisk-core-sounds-en")]:
        if not path.exists():
            parser.error(f"{path}: not found (apt-get install {package})")
    records = prompts(args.transcripts, args.sounds)
    if not records:
        parser.error(f"{args.transcripts}: no prompt in it has a recording in {args.sounds}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    write_atomically(args.out, "".join(json.dumps(record) + "\n" for record in records))
    print(f"{len(records)} prompts -> {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
