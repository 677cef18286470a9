"""Prepare LibriSpeech (or another corpus with a Lhotse recipe) into JSONL + Lhotse manifests.

    python recipes/librispeech/prepare.py --corpus-dir /data/LibriSpeech
    python recipes/librispeech/prepare.py --corpus-dir /data/LibriSpeech --download
    python recipes/librispeech/prepare.py --recipe tedlium --corpus-dir /data/TEDLIUM_release-3

Writes <part>.jsonl and <part>.cuts.jsonl.gz per split into --out-dir (default: data/
next to this script, where the conformer-*.yaml configs look for them).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from lhotse.audio import AudioLoadingError

from conformer_asr.data.corpora import LIBRISPEECH_PARTS, prepare_corpus, prepare_librispeech
from conformer_asr.data.manifest import DataIssues


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--corpus-dir", type=Path, required=True,
                        help="the corpus folder, e.g. /data/LibriSpeech")
    parser.add_argument("--out-dir", type=Path, default=Path(__file__).resolve().parent / "data")
    parser.add_argument("--parts", nargs="+", default=None,
                        help=f"splits to prepare (default: all present; LibriSpeech has "
                             f"{', '.join(LIBRISPEECH_PARTS)})")
    parser.add_argument("--download", action="store_true",
                        help="LibriSpeech only: first download missing parts from openslr.org")
    parser.add_argument("--recipe", default="librispeech",
                        help="any lhotse.recipes module name (default: librispeech)")
    parser.add_argument("--num-jobs", type=int, default=4, help="threads reading audio headers")
    args = parser.parse_args(argv)
    if args.download and args.recipe != "librispeech":
        parser.error("--download is only supported for --recipe librispeech")
    if args.num_jobs < 1:
        parser.error("--num-jobs must be at least 1")
    issues = DataIssues()
    try:
        if args.recipe == "librispeech":
            parts = prepare_librispeech(args.corpus_dir, args.out_dir, parts=args.parts,
                                        download=args.download, num_jobs=args.num_jobs,
                                        issues=issues)
        else:
            parts = prepare_corpus(args.recipe, args.corpus_dir, args.out_dir, parts=args.parts,
                                   num_jobs=args.num_jobs, issues=issues)
    except (OSError, ValueError) as error:
        parser.error(str(error))
    except AudioLoadingError as error:  # an unreadable (e.g. truncated) audio file
        parser.error(str(error).splitlines()[0].removesuffix(" Details:"))
    except AssertionError as error:  # how Lhotse's recipes report most unexpected layouts
        parser.error(f"{args.corpus_dir}: Lhotse's {args.recipe} recipe failed: {error}")
    for part in parts:
        print(f"{part.name}: {part.utterances} utterances, {part.hours:.2f} h -> "
              f"{part.jsonl_path or part.cuts_path}")
    if issues.total:
        print(f"skipped:\n{issues.summary()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
