"""``conformer-asr synth``: the argument parser hook and the command itself."""

from __future__ import annotations

import argparse
import json
import sys

from .build import build_corpus
from .store import SynthError
from .text import SOURCES
from .voices import ENGINES


def add_synth_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the ``synth`` options to an (argparse sub-)parser."""
    parser.add_argument("--out", required=True, help="output folder (created; resumed if present)")
    parser.add_argument("--utterances", type=int,
                        help="number of utterances (default: one per available sentence)")
    parser.add_argument("--hours", type=float, help="stop once the corpus holds this much audio")
    parser.add_argument("--jobs", type=int, default=2, help="synthesiser worker processes")
    parser.add_argument("--seed", type=int, default=0, help="seed of sentence order and voices")
    parser.add_argument("--engines", nargs="+", choices=ENGINES, default=list(ENGINES),
                        help="synthesisers to use (default: all)")
    parser.add_argument("--sources", nargs="+", choices=tuple(SOURCES), default=list(SOURCES),
                        help="text sources to use (default: all)")
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")


def run_synth(args: argparse.Namespace) -> int:
    """Build the corpus; print a JSON summary. 0: complete, 1: some utterances failed
    (re-run to retry them), 2: nothing could be built (the reason goes to stderr)."""
    if args.utterances is None and args.hours is None:
        print("error: give --utterances, --hours or both", file=sys.stderr)
        return 2
    try:
        summary = build_corpus(args.out, args.utterances, args.hours, jobs=args.jobs,
                               seed=args.seed, engines=tuple(args.engines),
                               sources=tuple(args.sources), progress=not args.no_progress)
    except SynthError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:  # Ctrl-C: the workers finish the utterances they are on
        print(f"stopped: the same command resumes, keeping the utterances written in "
              f"{args.out}", file=sys.stderr)
        return 130
    brief = {key: summary[key] for key in ("utterances", "hours", "words", "run")}
    brief["splits"] = {split: {k: v for k, v in tally.items() if k != "voice_ids"}
                       for split, tally in summary["splits"].items()}
    print(json.dumps(brief))
    return 1 if summary["run"]["failed"] else 0
