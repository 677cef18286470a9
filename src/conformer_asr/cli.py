"""The ``conformer-asr`` command: a thin argument parser over the package's functions."""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import importlib
import io
import json
import math
import os
import shutil
import signal
import sys
import tempfile
import threading
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

from . import __version__
from .device import device_flag
from .files import check_writable, write_atomically

if TYPE_CHECKING:
    from .inference.transcriber import Transcriber, Transcript


def _model_info(args: argparse.Namespace) -> int:
    """A built-in size's parameter counts, or a model folder's, with the folder's training
    record, its own LMs (name, parameters, training record; the word n-gram LM's sizes) and
    its decoding settings."""
    from .decoding.search import DecodingOptions
    from .inference.lm_dir import load_lm_dir
    from .inference.model_dir import (
        BACKWARD_LM_SUBDIR,
        LM_SUBDIR,
        NGRAM_FILE,
        bundled_ngram,
        load_ngram,
        read_config,
        resolve_model_dir,
    )
    from .models import ASRModel, count_parameters, get_config
    from .models.config import NAMED_CONFIGS, PAPER_PARAMS

    if args.model in NAMED_CONFIGS or not (args.model == "default" or Path(args.model).exists()):
        cfg = get_config(args.model)
        report = {"name": cfg.name, "params": count_parameters(ASRModel(cfg)),
                  "config": cfg.to_dict()}
        if cfg.name in PAPER_PARAMS:
            report["paper_params"] = PAPER_PARAMS[cfg.name]
        print(json.dumps(report))
        return 0
    directory = resolve_model_dir(args.model)
    folder = read_config(directory)
    report = {"name": folder.model.name, "params": count_parameters(ASRModel(folder.model)),
              "config": folder.model.to_dict()}
    if folder.info:
        report["info"] = folder.info
    for key, subdir in (("lm", LM_SUBDIR), ("backward_lm", BACKWARD_LM_SUBDIR)):
        if (directory / subdir).is_dir():
            lm, _, lm_info = load_lm_dir(directory / subdir)
            report[key] = {"name": lm.cfg.name, "info": lm_info,
                           "params": sum(p.numel() for p in lm.parameters())}
    ngram_file = bundled_ngram(directory)
    if ngram_file is not None:
        ngram = load_ngram(ngram_file, (folder.decoding or DecodingOptions()).ngram_order)
        report["ngram"] = {"file": NGRAM_FILE, "order": ngram.order, "words": len(ngram.ids),
                           "ngrams": [len(table.keys) for table in ngram.grams]}
    if folder.decoding is not None:
        report["decoding"] = dataclasses.asdict(folder.decoding)
    print(json.dumps(report))
    return 0


def _load_transcriber(args: argparse.Namespace) -> Transcriber:
    from .inference.transcriber import load_model

    # oneDNN keeps a compiled convolution for every batch shape it meets, up to 1,024 of
    # them; segments of a long recording come in many shapes, so that cache grew the
    # resident set of one hour's transcription by about 200 MiB. Eight cost no speed
    # (README). Read when the first convolution runs, so it must be set before.
    os.environ.setdefault("ONEDNN_PRIMITIVE_CACHE_CAPACITY", "8")
    return load_model(args.model, beam_size=args.beam_size,
                      beam_threshold=args.beam_threshold, lm=args.lm,
                      lm_weight=args.lm_weight, length_bonus=args.length_bonus,
                      oov_penalty=args.oov_penalty, head=args.head,
                      adapt_steps=args.adapt_steps, self_train_steps=args.self_train_steps,
                      confident_entropy=args.confident_entropy,
                      backward_share=args.backward_share, ngram_share=args.ngram_share,
                      speaker_adaptation=args.adapt_to_speaker, device=args.device,
                      int8=args.int8)


OUTPUT_SUFFIXES = {"text": ".txt", "json": ".json", "srt": ".srt", "vtt": ".vtt"}


STDIN = "-"  # an input name: the audio piped in


def _transcribe(args: argparse.Namespace) -> int:
    from .audio.io import AudioError
    from .inference.speaker_adapt import iter_transcripts_by_speaker

    if args.one_speaker and args.adapt_to_speaker is False:
        raise ValueError("--one-speaker: learns the files' speaker together, which "
                         "--no-adapt-to-speaker turns off")
    out_paths = _output_paths(args)
    if args.audio.count(STDIN) > 1:
        raise ValueError(f"{STDIN} (standard input) can be given once")
    if STDIN in args.audio and sys.stdin.isatty():
        raise ValueError(f"{STDIN}: standard input is a terminal; pipe audio into it "
                         f"(e.g. arecord -f cd | conformer-asr transcribe {STDIN})")
    transcriber = _load_transcriber(args)
    if args.one_speaker and not transcriber.options.speaker_adaptation:
        raise ValueError("--one-speaker: learns the files' speaker together, which this "
                         "decoding does not do; give --adapt-to-speaker too")
    failed = 0
    status = _StatusLine(sys.stderr)
    with _stdin_spooled(args.audio) as (inputs, spooled), warnings.catch_warnings(), status:
        if spooled:  # warnings and errors name the spooled file: name it "-" instead
            warnings.showwarning = _naming_stdin(spooled, warnings.showwarning)

        done = 0  # files transcribed

        def show(line: str) -> None:
            files = f" ({done} of {len(inputs)} files done)" if len(inputs) > 1 else ""
            status.show(f"transcribe: {line.replace(spooled, STDIN) if spooled else line}{files}")
        progress = show if status.on_terminal else None
        results = (iter_transcripts_by_speaker(transcriber, inputs, [0] * len(inputs),
                                               progress=progress)
                   if args.one_speaker  # else each file is one speaker's, where they are learnt
                   else transcriber.iter_transcripts(inputs, progress=progress))
        for index, (_, result) in enumerate(results):
            status.clear()
            done = index + 1
            name = args.audio[index]
            if isinstance(result, AudioError):
                message = str(result)
                if name == STDIN:
                    message = message.replace(spooled, STDIN)
                print(f"error: {message}", file=sys.stderr)
                failed += 1
            elif out_paths:
                try:
                    write_atomically(out_paths[index], _render(args, name, result, alone=True))
                except OSError as error:  # this output only: the others are still written
                    print(f"error: {out_paths[index]}: {error.strerror or error}",
                          file=sys.stderr)
                    failed += 1
            else:
                print(_render(args, name, result, alone=len(args.audio) == 1), end="",
                      flush=True)
    return 1 if failed else 0


@contextlib.contextmanager
def _stdin_spooled(names: list[str]) -> Iterator[tuple[list[str], str]]:
    """(``names`` with ``STDIN`` replaced by a temporary file holding what was piped in,
    that file's name or ""). The audio is copied to disk, not memory: readers need to
    seek, and an hour of it is hundreds of MB. The file is removed on leaving."""
    if STDIN not in names:
        yield names, ""
        return
    with tempfile.TemporaryDirectory(prefix="conformer-asr-") as folder:
        spooled = os.path.join(folder, "stdin")
        with open(spooled, "wb") as out:
            shutil.copyfileobj(sys.stdin.buffer, out, 1 << 20)
        yield [spooled if name == STDIN else name for name in names], spooled


def _naming_stdin(spooled: str, show: Callable[..., None]) -> Callable[..., None]:
    """``show`` (a ``warnings.showwarning``) for messages that name the file ``spooled``
    as ``STDIN``."""
    def show_as_stdin(message: Warning | str, *where: Any, **more: Any) -> None:
        show(str(message).replace(spooled, STDIN), *where, **more)
    return show_as_stdin


def _output_paths(args: argparse.Namespace) -> list[Path]:
    """Where ``--out-dir`` puts each input's transcript (none without it); ValueError where
    it cannot, or where the flags do not go together."""
    if args.words and args.format != "json":
        raise ValueError("--words goes with --format json (srt and vtt are timed anyway)")
    if args.out_dir is None:
        if args.format in ("srt", "vtt") and len(args.audio) > 1:
            raise ValueError(f"--format {args.format}: give --out-dir for more than one file")
        return []
    if args.out_dir == "":
        raise ValueError("--out-dir: an empty string is not a folder name")
    out_dir = Path(args.out_dir)
    paths = [out_dir / (("stdin" if audio == STDIN else Path(audio).stem)
                        + OUTPUT_SUFFIXES[args.format]) for audio in args.audio]
    first: dict[Path, str] = {}
    for audio, path in zip(args.audio, paths, strict=True):
        # one file named twice ("a.wav ./a.wav") writes the same transcript twice
        if Path(first.setdefault(path, audio)).resolve() != Path(audio).resolve():
            raise ValueError(f"--out-dir: {first[path]} and {audio} would both be written to "
                             f"{path}")
    if out_dir.exists() and not out_dir.is_dir():
        raise ValueError(f"--out-dir {out_dir}: a file, not a folder")
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        check_writable(paths[0])  # a read-only folder: found out before decoding
    except OSError as exc:
        raise ValueError(f"--out-dir {out_dir}: {exc.strerror or exc}") from None
    return paths


def _render(args: argparse.Namespace, path: str, result: Transcript, alone: bool) -> str:
    """One input's transcript in ``--format``, ending in a newline; ``alone``: the only
    text of its output, so plain text need not name its input."""
    from .inference.subtitles import to_srt, to_vtt

    if args.format == "srt":
        return to_srt(result)
    if args.format == "vtt":
        return to_vtt(result)
    if args.format == "json":
        record = {"audio": path, "text": result.text, "duration": round(result.duration, 3)}
        if args.words:
            record["words"] = [vars(w) for w in result.words]
        return json.dumps(record) + "\n"
    return f"{result.text}\n" if alone else f"{path}\t{result.text}\n"


def _evaluate(args: argparse.Namespace) -> int:
    from .inference.evaluate import check_output, evaluate, write_hypotheses

    if args.output is not None:
        try:
            check_output(args.output, args.manifest)
        except OSError as error:  # found before any work, as a missing folder is: exit 2
            raise ValueError(_described(error)) from None
    transcriber = _load_transcriber(args)
    with _StatusLine(sys.stderr) as status:
        report = evaluate(transcriber, args.manifest, progress=(
            lambda line: status.show(f"evaluate: {line}")) if status.on_terminal else None)
    unwritten: OSError | None = None
    if args.output is not None:
        # before the report, which a reader that leaves early (`| head`) would cut short;
        # a disk that filled up meanwhile costs the file, not the report
        try:
            write_hypotheses(report, args.output)
        except OSError as error:
            unwritten = error
    if args.json:
        decoding = {**vars(transcriber.options), "lm": transcriber.lm is not None,
                    "backward_lm": transcriber.backward_lm is not None,
                    "ngram": transcriber.ngram is not None}
        print(json.dumps({**report.to_dict(), "decoding": decoding, "int8": args.int8}))
        for reason in report.failed:
            print(reason, file=sys.stderr)
    else:
        print(report.format())
    if unwritten is not None:
        sys.stdout.flush()
        raise unwritten
    return 1 if report.failed else 0  # scored as empty: the WER is not the model's alone


class _StatusLine:
    """One line of a terminal saying where the work stands, rewritten in place, cleared
    before a warning is printed in its ``with`` block and on leaving it; callers show one
    only where ``stream`` is a terminal (``on_terminal``), not in a pipe, a file or CI
    logs. The cursor is left at the line's start, so that anything else printed meanwhile
    writes over it instead of after it. A line wider than the terminal keeps its end (a
    long path loses its start): a wrapped one would not be rewritten in place."""

    def __init__(self, stream: TextIO) -> None:
        self.stream = stream
        self.on_terminal = stream.isatty()
        self.width = 0  # of the line shown
        self.show_warning = warnings.showwarning  # the one its block replaces

    def show(self, line: str) -> None:
        try:
            columns = os.get_terminal_size(self.stream.fileno()).columns
        except OSError:
            columns = 0
        room = max(columns or 80, 20) - 1  # the last column: some terminals wrap on it
        if len(line) > room:
            line = "..." + line[len(line) - room + 3:]
        self.stream.write("\r" + line.ljust(self.width) + "\r")
        self.stream.flush()
        self.width = len(line)

    def clear(self) -> None:
        if self.width:
            self.stream.write("\r" + " " * self.width + "\r")
            self.stream.flush()
            self.width = 0

    def _cleared_first(self, *warning: Any, **more: Any) -> None:
        self.clear()
        self.show_warning(*warning, **more)

    def __enter__(self) -> _StatusLine:
        self.show_warning = warnings.showwarning
        warnings.showwarning = self._cleared_first
        return self

    def __exit__(self, *exc: object) -> None:
        warnings.showwarning = self.show_warning
        self.clear()


def _train(args: argparse.Namespace) -> int:
    from .training.config import load_config
    from .training.run import train

    train(load_config(args.config, args.set))
    return 0


def _train_lm(args: argparse.Namespace) -> int:
    from .inference.lm_dir import load_tokenizer
    from .models.lm import get_lm_config
    from .training.lm_train import LMTrainConfig, train_lm

    config = LMTrainConfig(steps=args.steps, batch_size=args.batch_size, peak_lr=args.lr,
                           warmup_steps=args.warmup_steps,
                           heldout_fraction=args.heldout_fraction, seed=args.seed,
                           bf16=args.bf16)
    lm_config = dataclasses.replace(get_lm_config(args.config), backward=args.backward)
    report = train_lm(args.text, load_tokenizer(args.tokenizer), args.out, lm_config, config,
                      exclude=args.exclude, device=args.device,
                      log=lambda line: print(line, flush=True))
    print(f"removed {report.excluded} training sentences found in --exclude manifests; "
          f"held-out perplexity {report.heldout_perplexity_start:.2f} -> "
          f"{report.heldout_perplexity:.2f}; LM written to {args.out}")
    return 0


# Flag types: a bad value is an argparse error that names the flag the user typed (the
# functions behind the flags name their own parameters: `steps`, `beam_size`).


def _number(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"not a finite number: {text!r}")
    return value


def _floats(text: str) -> list[float]:
    values = [_number(x) for x in text.split(",") if x.strip()]
    if not values:
        raise argparse.ArgumentTypeError(f"not a comma-separated list of numbers: {text!r}")
    return values


def _number_between(low: float, high: float, meaning: str) -> Callable[[str], float]:
    """The type of a flag whose number must lie strictly between ``low`` and ``high``."""
    def parse(text: str) -> float:
        value = _number(text)
        if not low < value < high:
            raise argparse.ArgumentTypeError(f"must be {meaning}, got {text}")
        return value
    return parse


def _non_negative(text: str) -> float:
    value = _number(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {text}")
    return value


def _share(text: str) -> float:
    """The type of a flag that is a share: a number from 0 to 1."""
    value = _number(text)
    if not 0 <= value <= 1:
        raise argparse.ArgumentTypeError(f"must be between 0 and 1, got {text}")
    return value


def _shares(text: str) -> list[float]:
    """The type of a flag that is a comma-separated list of shares."""
    shares = [_share(x.strip()) for x in text.split(",") if x.strip()]
    if not shares:
        raise argparse.ArgumentTypeError(f"not a comma-separated list of shares: {text!r}")
    return shares


def _whole_number(text: str, minimum: int) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if value < minimum:
        raise argparse.ArgumentTypeError(f"must be {minimum} or more, got {text}")
    return value


def positive_count(text: str) -> int:
    """An argparse type: a whole number >= 1 (the benchmark runner's counts too)."""
    return _whole_number(text, 1)


def _adapt_steps_flag(text: str) -> int:
    return _whole_number(text, 0)


def _add_beam_threshold_flag(p: argparse.ArgumentParser, default: float | None,
                             help_default: str) -> None:
    p.add_argument("--beam-threshold", type=_number_between(0, math.inf, "> 0"),
                   default=default,
                   help="beam search drops the hypotheses that score more than this below "
                        f"the best ({help_default}; with 1000 the beam keeps as many as it "
                        "has room for)")


def _add_adapt_flag(p: argparse.ArgumentParser, default: int | None, help_default: str) -> None:
    p.add_argument("--adapt-steps", type=_adapt_steps_flag, default=default,
                   help="test-time adaptation: Adam steps on the encoder's LayerNorms for "
                        f"each utterance before it is decoded; 0 is off ({help_default})")


def _add_self_train_flag(p: argparse.ArgumentParser, default: int | None,
                         help_default: str) -> None:
    p.add_argument("--self-train-steps", type=_adapt_steps_flag, default=default,
                   help="self-training: decode each utterance, take that many Adam steps on "
                        "its encoder LayerNorms with the CTC loss towards the transcript, then "
                        f"decode it again; 0 is off ({help_default}; the model needs a CTC "
                        "head)")


def _add_confident_flag(p: argparse.ArgumentParser, default: float | None,
                        help_default: str) -> None:
    p.add_argument("--confident-entropy", type=_non_negative,
                   default=default,
                   help="decode once, without the adaptation and self-training, each "
                        "utterance whose unadapted CTC posteriors have a mean entropy per "
                        f"frame (nats) of at most this; 0 adapts all ({help_default})")


def _tune(args: argparse.Namespace) -> int:
    from .decoding.ngram import SpelledNgram, WordNgramLM
    from .inference.lm_dir import (
        lm_for_decoding,
        load_lexicon_for,
        load_lm_for,
        require_direction,
    )
    from .inference.model_dir import load_model_dir, resolve_model_dir
    from .inference.tune import best_result, format_row, tune
    from .models.quantize import check_int8_device, quantize_int8
    from .training.lm_corpus import read_sentences

    if args.int8:
        check_int8_device(args.device)
    model, tokenizer, _ = load_model_dir(resolve_model_dir(args.model))
    lm = load_lm_for(args.lm, tokenizer)
    require_direction(lm, False, args.lm)
    lexicon = load_lexicon_for(args.lm, tokenizer)
    if args.int8:  # tuned as it will decode
        model = quantize_int8(model)
    backward_lm, shares = None, args.backward_shares or [0.0]
    if args.backward_lm is not None:
        backward_lm = load_lm_for(args.backward_lm, tokenizer)
        require_direction(backward_lm, True, args.backward_lm)
        backward_lm = lm_for_decoding(backward_lm, args.device)
        shares = args.backward_shares or [0.0, 0.25, 0.5, 0.75]
    ngram, ngram_shares = None, args.ngram_shares or [0.0]
    if args.ngram_text is not None:
        ngram = SpelledNgram(WordNgramLM(read_sentences([args.ngram_text]),
                                         _ngram_order(args)),
                             tokenizer.vocabulary())
        ngram_shares = args.ngram_shares or [0.0, 0.5, 0.8, 1.0]
    elif args.ngram_order:
        raise ValueError("--ngram-order: counts --ngram-text; give that too")
    tuning = tune(model.to(args.device), tokenizer, lm_for_decoding(lm, args.device),
                  args.manifest, args.beam_size, args.lm_weights, args.length_bonuses,
                  args.oov_penalties, lexicon, adapt_steps=args.adapt_steps,
                  self_train_steps=args.self_train_steps,
                  confident_entropy=args.confident_entropy, beam_threshold=args.beam_threshold,
                  backward_lm=backward_lm, backward_shares=shares, ngram=ngram,
                  ngram_shares=ngram_shares, log=lambda line: print(line, flush=True))
    print(f"best (beam {args.beam_size}, threshold {args.beam_threshold:g}):\n"
          f"{format_row(best_result(tuning.results))}")
    return 1 if tuning.skipped else 0  # as evaluate: the WERs are not the model's alone


def _pack(args: argparse.Namespace) -> int:
    from .decoding.search import DecodingOptions
    from .inference.pack import pack_model

    decoding = DecodingOptions(beam_size=args.beam_size, beam_threshold=args.beam_threshold,
                               lm_weight=args.lm_weight,
                               length_bonus=args.length_bonus, oov_penalty=args.oov_penalty,
                               adapt_steps=args.adapt_steps,
                               self_train_steps=args.self_train_steps,
                               confident_entropy=args.confident_entropy,
                               backward_share=args.backward_share,
                               ngram_share=args.ngram_share,
                               ngram_order=_ngram_order(args),
                               speaker_adaptation=bool(args.adapt_to_speaker))
    ngram_sentences = None
    if args.ngram_text:
        from .training.lm_corpus import drop_excluded, manifest_texts, read_sentences

        ngram_sentences, excluded = drop_excluded(read_sentences(args.ngram_text),
                                                  manifest_texts(args.exclude))
        print(f"n-gram text: {len(ngram_sentences)} sentences; removed {excluded} found in "
              "--exclude manifests")
    elif args.exclude or args.ngram_order:
        flag = "--exclude: removes sentences from" if args.exclude else "--ngram-order: counts"
        raise ValueError(f"{flag} --ngram-text; give that too")
    out = pack_model(args.model, args.lm, args.out, decoding, args.backward_lm,
                     ngram_sentences)
    size = sum(f.stat().st_size for f in out.rglob("*") if f.is_file())
    print(f"{out}: {args.model} + {args.lm} (weights in float16, the LM's matrices in "
          f"int8), decoding with beam "
          f"{decoding.beam_size} (threshold {decoding.beam_threshold:g}), "
          f"LM weight {decoding.lm_weight:g}, length bonus {decoding.length_bonus:g}, OOV "
          f"penalty {decoding.oov_penalty:g}, {decoding.adapt_steps} adaptation steps, "
          f"{decoding.self_train_steps} self-training steps"
          + (f" (none for utterances of at most {decoding.confident_entropy:g} nats a frame "
             "unadapted)" if decoding.gates else "")
          + (f", rescored with {args.backward_lm} at a share of {decoding.backward_share:g}"
             if args.backward_lm else "")
          + (f", rescored with a word n-gram LM at a share of {decoding.ngram_share:g}"
             if args.ngram_text else "")
          + (", each speaker learnt first" if decoding.speaker_adaptation else "")
          + f"; {size / 2**20:.1f} MiB")
    return 0


def _average(args: argparse.Namespace) -> int:
    from .inference.average import average_models

    out = average_models(args.models, args.out)
    print(f"{out}: the mean of {len(args.models)} models' weights, in float32")
    return 0


def _lm_flag(text: str) -> str | None:
    return None if text == "none" else text


def _add_model_flag(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default=None,
                   help="model folder or training checkpoint (default: the bundled model)")


def _add_device_flag(p: argparse.ArgumentParser) -> None:
    p.add_argument("--device", type=device_flag, default="cpu", help="cpu, cuda or cuda:N")


def _add_transcriber_flags(p: argparse.ArgumentParser) -> None:
    """Decoding and device flags: the arguments of ``load_model``."""
    p.add_argument("--beam-size", type=positive_count, default=None,
                   help="1: greedy search (default: 1, or the model folder's own setting "
                        "when an LM is used and the folder has one, e.g. the bundled model)")
    _add_beam_threshold_flag(p, None, "default 10, or the model folder's own setting")
    p.add_argument("--lm", type=_lm_flag, default="auto",
                   help="LM folder for shallow fusion (train-lm), or 'none' (default: the "
                        "model folder's own lm/ if it has one)")
    p.add_argument("--lm-weight", type=_number, default=None,
                   help="LM score weight (default 0.3, or the model folder's own setting; "
                        "find it with conformer-asr tune)")
    p.add_argument("--length-bonus", type=_number, default=None,
                   help="score added per emitted token (default 0, or the model folder's own "
                        "setting)")
    p.add_argument("--oov-penalty", type=_number, default=None,
                   help="score taken per word outside the LM folder's lexicon (default 0, or "
                        "the model folder's own setting)")
    p.add_argument("--backward-share", type=_share, default=None,
                   help="share of the LM score that the model folder's backward LM takes when "
                        "it rescores the search's 8 best hypotheses; 0 is off (default: the "
                        "folder's own setting; only with the folder's own LM)")
    p.add_argument("--ngram-share", type=_share, default=None,
                   help="the same for the model folder's word n-gram LM (ngram.txt.xz, pack "
                        "--ngram-text); 0 is off (default: the folder's own setting)")
    p.add_argument("--head", default=None,
                   help="auto, ctc or transducer: the output a hybrid CTC + transducer model "
                        "decodes with (default: auto, the transducer where there is one)")
    _add_adapt_flag(p, None, "default: the model folder's own setting when an LM is used, "
                             "5 for the bundled model, else 0")
    _add_self_train_flag(p, None, "default: the model folder's own setting when an LM is "
                                  "used, 3 for the bundled model, else 0")
    _add_confident_flag(p, None, "default: the model folder's own setting when an LM is "
                                 "used, else 0")
    _add_device_flag(p)
    _add_int8_flag(p)


_SPEAKER_DEFAULT = "default: the model folder's own setting when an LM is used, on for the " \
                   "bundled model"


def _add_speaker_flag(p: argparse.ArgumentParser, whose: str, help_default: str) -> None:
    p.add_argument("--adapt-to-speaker", action=argparse.BooleanOptionalAction, default=None,
                   help=f"adapt to {whose} first: transcribe (beam 32 at most, unadapted), "
                        "train a copy of the encoder's LayerNorms towards the transcripts, "
                        "twice, then transcribe again with that copy, which replaces the "
                        "per-utterance self-training (the model needs a CTC head); a speaker "
                        "with under 30 s of speech, or (with --confident-entropy) one the "
                        "unadapted model is sure of as a whole, is decoded as without it "
                        f"({help_default})")


def _ngram_order(args: argparse.Namespace) -> int:
    """The order --ngram-text is counted at: --ngram-order's, else the default's (the flag
    defaults to None, so that giving it without --ngram-text can be refused)."""
    from .decoding.search import DecodingOptions

    return args.ngram_order or DecodingOptions.ngram_order


def _add_ngram_order_flag(p: argparse.ArgumentParser) -> None:
    p.add_argument("--ngram-order", type=lambda text: _whole_number(text, 2), default=None,
                   help="count --ngram-text's n-grams up to this many words (default 3; "
                        "4 holds up to 65,533 different words)")


def _add_int8_flag(p: argparse.ArgumentParser) -> None:
    p.add_argument("--int8", action="store_true",
                   help="run the model's Linear and LSTM layers in int8 too (and its "
                        "subsampling convolutions in bfloat16 on AVX-512 CPUs; the LMs run in "
                        "int8 on the CPU either way): faster, a little less accurate (CPU "
                        "only)")


def _synth(args: argparse.Namespace) -> int:
    from .data.synth import run_synth

    return run_synth(args)


class _HelpWithDefaults(argparse.HelpFormatter):
    """Ends each option's help with its default, unless the help already speaks of one or
    there is nothing to show (no default, an off switch)."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        default, text = action.default, action.help or ""
        if (not action.option_strings or "default" in text or default is None
                or default is False or default == [] or default is argparse.SUPPRESS):
            return action.help
        values = default if isinstance(default, list) else [default]
        shown = ",".join(f"{value:g}" if isinstance(value, float) else str(value)
                         for value in values)
        return f"{text} (default: {shown})".lstrip()


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="conformer-asr",
        description="Speech recognition with Conformer models: transcribe with the bundled "
                    "model, evaluate, train, and build a synthetic corpus. "
                    "'conformer-asr COMMAND --help' tells more.")
    parser.add_argument("--version", action="version", version=__version__)
    subparsers = parser.add_subparsers(dest="command", required=True)

    def command(name: str, **kwargs: Any) -> argparse.ArgumentParser:
        return subparsers.add_parser(name, formatter_class=_HelpWithDefaults, **kwargs)

    p = command("model-info", help="print parameter counts of a model as JSON")
    p.add_argument("model", help="conformer-s|m|l, a model folder or a training checkpoint")
    p.set_defaults(run=_model_info)

    p = command("transcribe", help="speech to text")
    p.add_argument("audio", nargs="+", help="wav/flac/ogg/mp3 files (m4a, webm, ... too "
                   "where ffmpeg is installed), any rate and channels; - reads standard "
                   "input")
    _add_model_flag(p)
    p.add_argument("--format", choices=list(OUTPUT_SUFFIXES), default="text",
                   help="text, JSON lines, or SubRip / WebVTT subtitles")
    p.add_argument("--words", action="store_true", help="with --format json: word timestamps")
    p.add_argument("--out-dir", default=None,
                   help="write each file's transcript to OUT_DIR/NAME.txt|json|srt|vtt")
    _add_transcriber_flags(p)
    _add_speaker_flag(p, "each file's speaker", _SPEAKER_DEFAULT)
    p.add_argument("--one-speaker", action="store_true",
                   help="the files are all one speaker's, learnt together (default: each file "
                        "is a speaker of its own)")
    p.set_defaults(run=_transcribe)

    p = command("evaluate", help="WER and real-time factor on a JSONL manifest",
                description="Utterances whose audio cannot be read are named, scored as "
                            "empty, and make the exit status 1.")
    p.add_argument("--manifest", required=True,
                   help='lines {"id", "audio", "text"}, or Lhotse cuts (.jsonl[.gz])')
    _add_model_flag(p)
    p.add_argument("--output", default=None, help='write {"id", "text"} lines here')
    _add_transcriber_flags(p)
    _add_speaker_flag(p, 'each "speaker" (or "voice") of the manifest, from all its '
                         "utterances (one without a speaker, from itself)", _SPEAKER_DEFAULT)
    p.add_argument("--json", action="store_true", help="print the report as one JSON object")
    p.set_defaults(run=_evaluate)

    p = command("train", help="train a model from a YAML config (resumes if stopped)")
    p.add_argument("config", help="training YAML (see recipes/)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config value, e.g. --set trainer.max_steps=1000")
    p.set_defaults(run=_train)

    p = command("train-lm", help="train a word-piece LSTM LM and write it with its lexicon, "
                                 "for shallow fusion")
    p.add_argument("--text", nargs="+", required=True,
                   help="text files (.txt or .txt.gz), one sentence per line, or JSONL "
                        "manifests (their transcripts)")
    p.add_argument("--tokenizer", required=True,
                   help="the acoustic model's folder ('default': the bundled model), or "
                        "its tokenizer.model")
    p.add_argument("--out", required=True, help="LM folder to write (resumes if stopped)")
    p.add_argument("--exclude", nargs="+", default=[], metavar="MANIFEST",
                   help="dev/test manifests: their transcripts are removed from the text")
    p.add_argument("--config", default="small", help="LM size: tiny, small, medium or paper")
    p.add_argument("--backward", action="store_true",
                   help="read each sentence last word first: an LM that rescores a search's "
                        "hypotheses (pack --backward-lm), not one to fuse into it")
    p.add_argument("--steps", type=positive_count, default=2000, help="training steps in all")
    p.add_argument("--batch-size", type=positive_count, default=64, help="sentences per step")
    p.add_argument("--lr", type=_number_between(0, math.inf, "positive"), default=2e-3,
                   help="peak learning rate (Noam schedule)")
    p.add_argument("--warmup-steps", type=positive_count, default=200,
                   help="steps to the peak learning rate")
    p.add_argument("--heldout-fraction", type=_number_between(0, 1, "between 0 and 1"),
                   default=0.02, help="share of the sentences held out to measure perplexity")
    p.add_argument("--seed", type=int, default=0, help="seed of the held-out split, the "
                   "sentence order and the initial weights")
    p.add_argument("--bf16", action="store_true", help="compute in bfloat16 (autocast; the "
                   "weights stay float32): twice as fast a step on an Intel CPU with AMX; "
                   "slower on CPUs without bfloat16 instructions")
    _add_device_flag(p)
    p.set_defaults(run=_train_lm)

    p = command("tune", help="grid-search LM weight, length bonus, OOV penalty and the "
                             "backward and n-gram LMs' shares on a dev set")
    p.add_argument("--manifest", required=True,
                   help='dev lines {"id", "audio", "text"}, or Lhotse cuts (.jsonl[.gz]); '
                        "each utterance is decoded whole, so at most 60 s long")
    _add_model_flag(p)
    p.add_argument("--lm", required=True, help="LM folder (conformer-asr train-lm)")
    p.add_argument("--beam-size", type=positive_count, default=4, help="hypotheses kept")
    _add_beam_threshold_flag(p, 10.0, "default 10")
    p.add_argument("--lm-weights", type=_floats, default=[0.0, 0.1, 0.2, 0.3, 0.4, 0.5],
                   help="comma-separated, e.g. 0.1,0.2,0.3")
    p.add_argument("--length-bonuses", type=_floats, default=[0.0, 0.5, 1.0, 1.5],
                   help="comma-separated, e.g. 0,0.5,1")
    p.add_argument("--oov-penalties", type=_floats, default=[0.0],
                   help="comma-separated, e.g. 0,2,4 (needs the LM folder's lexicon.txt)")
    p.add_argument("--backward-lm", default=None,
                   help="backward LM folder (train-lm --backward): rescores each search's 8 "
                        "best hypotheses, as pack --backward-lm will")
    p.add_argument("--backward-shares", type=_shares, default=None,
                   help="comma-separated shares of the LM score the backward LM takes, each "
                        "0-1 (default: 0,0.25,0.5,0.75 with --backward-lm, else 0)")
    p.add_argument("--ngram-text", default=None, metavar="TEXT",
                   help="one sentence per line (.txt, .gz, .xz; a packed folder's "
                        "ngram.txt.xz), normalised as pack does: a word n-gram LM of it "
                        "rescores each search's 8 best hypotheses, as pack --ngram-text will")
    _add_ngram_order_flag(p)
    p.add_argument("--ngram-shares", type=_shares, default=None,
                   help="comma-separated shares of the LM score the n-gram LM takes, each "
                        "0-1 (default: 0,0.5,0.8,1 with --ngram-text, else 0); pairs with the "
                        "backward shares over 1 are left out")
    _add_adapt_flag(p, 0, "default: 0; tune as pack's --adapt-steps will decode")
    _add_self_train_flag(p, 0, "default: 0; tune as pack's --self-train-steps will decode, "
                               "at the time of a full decoding per setting")
    _add_confident_flag(p, 0.0, "default: 0; tune as pack's --confident-entropy will decode")
    _add_device_flag(p)
    _add_int8_flag(p)
    p.set_defaults(run=_tune)

    p = command("pack", help="bundle a model folder with an LM and the decoding tuned for "
                             "them (what the bundled model is)")
    p.add_argument("model", help="model folder")
    p.add_argument("--lm", required=True, help="LM folder (train-lm), same tokenizer")
    p.add_argument("--out", required=True, help="folder to create")
    p.add_argument("--beam-size", type=positive_count, default=8, help="hypotheses kept")
    _add_beam_threshold_flag(p, 10.0, "default 10")
    p.add_argument("--lm-weight", type=_number, required=True, help="from conformer-asr tune")
    p.add_argument("--length-bonus", type=_number, required=True, help="from conformer-asr tune")
    p.add_argument("--oov-penalty", type=_number, default=0.0, help="from conformer-asr tune")
    _add_adapt_flag(p, 0, "default: 0")
    _add_self_train_flag(p, 0, "default: 0")
    _add_confident_flag(p, 0.0, "default: 0")
    _add_speaker_flag(p, "each speaker (each file transcribe is given, each speaker of a "
                         "manifest evaluate is given)", "default: off")
    p.add_argument("--backward-lm", default=None,
                   help="backward LM folder (train-lm --backward), same tokenizer: rescores "
                        "each search's 8 best hypotheses with the LM")
    p.add_argument("--backward-share", type=_share, default=0.0,
                   help="share of the LM score the backward LM takes")
    p.add_argument("--ngram-text", nargs="+", default=[], metavar="TEXT",
                   help="text files (.txt, .gz, .xz), one sentence per line, or JSONL "
                        "manifests: stored, a word n-gram LM counted from them rescores each "
                        "search's 8 best hypotheses with the LM")
    _add_ngram_order_flag(p)
    p.add_argument("--exclude", nargs="+", default=[], metavar="MANIFEST",
                   help="dev/test manifests: their transcripts are removed from --ngram-text")
    p.add_argument("--ngram-share", type=_share, default=0.0,
                   help="share of the LM score the n-gram LM takes")
    p.set_defaults(run=_pack)

    p = command("average", help="average the weights of models of one architecture and "
                                "tokenizer (runs trained on from one model) into a new model "
                                "folder")
    p.add_argument("models", nargs="+", help="model folders ('default': the bundled model) "
                   "or training checkpoints, two or more")
    p.add_argument("--out", required=True, help="folder to create")
    p.set_defaults(run=_average)

    from .data.synth import add_synth_arguments

    p = command("synth", help="build a multi-voice synthetic speech corpus")
    add_synth_arguments(p)
    p.set_defaults(run=_synth)
    return parser


def main(argv: list[str] | None = None) -> int:
    try:
        return _run_command(argv)
    except KeyboardInterrupt:  # also while torch is still being imported
        return 130


def _run_command(argv: list[str] | None) -> int:
    args = build_parser().parse_args(argv)  # first: --help and usage errors need no torch
    _import_holding_ctrl_c("torch")
    from .audio.io import AudioError, AudioWarning
    from .data.manifest_errors import ManifestError, ReferenceWarning
    from .inference.model_dir import ModelDirError
    from .malloc import keep_freed_memory
    from .models.config import ConfigError

    keep_freed_memory()
    if isinstance(sys.stdout, io.TextIOWrapper):
        # a file name that is not UTF-8 comes in as "surrogate escapes" and goes out as the
        # bytes it was, as other Unix tools print it, instead of failing to print
        sys.stdout.reconfigure(errors="surrogateescape")
    try:
        with warnings.catch_warnings():
            warnings.showwarning = _one_line_for((AudioWarning, ReferenceWarning))
            code = args.run(args)
        sys.stdout.flush()
        return code
    except (ConfigError, ModelDirError, AudioError, ManifestError, FileNotFoundError,
            ValueError) as error:
        sys.stderr.write(f"error: {_described(error)}\n")  # one write: DDP processes share it
        return 2
    except BrokenPipeError:
        # The reader left early (`... | head`): stop quietly like other Unix tools, and point
        # stdout at /dev/null so the interpreter's final flush cannot raise again.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141
    except OSError as error:  # a folder that cannot be written, a full disk, ...
        sys.stderr.write(f"error: {_described(error)}\n")
        return 1


def _import_holding_ctrl_c(module: str) -> None:
    """Imports ``module`` with Ctrl-C (SIGINT) held until the import is done, then acted on.
    torch's import sometimes catches a KeyboardInterrupt raised inside it and goes on (3 of
    40 tries of ``python -c "import torch"`` interrupted at random): a Ctrl-C while torch
    loaded was then ignored, and the command ran to the end. Signal handlers can only be
    set in the main thread; elsewhere the module is just imported."""
    if threading.current_thread() is not threading.main_thread():
        importlib.import_module(module)
        return
    held: list[int] = []
    previous = signal.signal(signal.SIGINT, lambda signum, frame: held.append(signum))
    try:
        importlib.import_module(module)
    finally:
        signal.signal(signal.SIGINT, previous if previous is not None else signal.SIG_DFL)
    if held:
        raise KeyboardInterrupt


def _one_line_for(categories: tuple[type[Warning], ...]) -> Callable[..., None]:
    """A ``warnings.showwarning`` that prints warnings of ``categories`` as ``warning: ...``
    lines (their messages name the file), and others as Python does."""
    python_way = warnings.showwarning

    def show(message: Warning | str, kind: type[Warning], *where: Any, **more: Any) -> None:
        if issubclass(kind, categories):
            sys.stderr.write(f"warning: {message}\n")
        else:
            python_way(message, kind, *where, **more)
    return show


def _described(error: Exception) -> str:
    """An OSError from the system as ``PATH: reason`` (not ``[Errno 17] File exists: 'PATH'``);
    any other error as it says itself."""
    if isinstance(error, OSError) and error.filename is not None and error.strerror:
        return f"{error.filename}: {error.strerror}"
    return str(error)


if __name__ == "__main__":
    sys.exit(main())
