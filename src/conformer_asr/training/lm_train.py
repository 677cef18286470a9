"""Train a word-piece LSTM language model on text (``conformer-asr train-lm``).

    OUT_DIR/config.json, model.safetensors, tokenizer.model   the LM folder (``lm_dir.py``)
    OUT_DIR/lexicon.txt      the words of the training text and of the CMU dictionary
    OUT_DIR/train_state.pt   weights, optimiser, schedule and step, for resuming

A plain PyTorch loop: batches of random sentences, Adam with the Noam schedule,
gradient clipping. Sentences of the ``exclude`` manifests are removed before
anything else. Re-running the same command resumes from ``train_state.pt``
(a larger ``steps`` continues a finished run).
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import os
import signal
import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ..files import LOCK_FILE, claimed, replacing, save_torch
from ..inference.lm_dir import STATE_FILE, save_lm_dir
from ..models.config import ConfigError
from ..models.lm import LMConfig, WordPieceLM
from ..text.dictionary import dictionary_words
from ..text.tokenizer import Tokenizer
from .lm_corpus import drop_excluded, manifest_texts, read_sentences, split_heldout
from .schedule import noam_scheduler


@dataclass(frozen=True)
class LMTrainConfig:
    steps: int = 2000
    batch_size: int = 64  # sentences per step
    peak_lr: float = 2e-3
    warmup_steps: int = 200
    grad_clip: float = 1.0
    heldout_fraction: float = 0.02
    max_heldout: int = 2000  # sentences
    log_every: int = 100
    checkpoint_every: int = 500
    seed: int = 0
    bf16: bool = False  # the forward pass under bfloat16 autocast (weights stay float32)

    def __post_init__(self) -> None:
        for name in ("steps", "batch_size", "warmup_steps", "log_every", "checkpoint_every"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name}: must be positive")
        if self.peak_lr <= 0:
            raise ConfigError("peak_lr: must be positive")
        if not 0.0 < self.heldout_fraction < 1.0:
            raise ConfigError("heldout_fraction: must be in (0, 1)")
        if self.max_heldout < 1:
            raise ConfigError("max_heldout: must be positive")


@dataclass
class LMTrainReport:
    sentences: int  # read from the text files
    excluded: int  # removed because an excluded manifest has them
    train_sentences: int
    heldout_sentences: int
    heldout_perplexity_start: float  # per token, each sentence's end symbol included
    heldout_perplexity: float
    steps: int


@torch.no_grad()
def perplexity(lm: WordPieceLM, sentences: Sequence[Sequence[int]], batch_size: int = 64) -> float:
    """Per-token perplexity of non-empty ``sentences`` (each end symbol counts as a token)."""
    lm.eval()
    total, count = 0.0, 0
    for i in range(0, len(sentences), batch_size):
        chunk = sentences[i:i + batch_size]
        total -= float(lm.token_log_probs(chunk).sum())
        count += sum(len(s) + 1 for s in chunk)
    return math.exp(total / count)


def _batches(n: int, batch_size: int, seed: int, start: int) -> Iterator[list[int]]:
    """Sentence indices for steps ``start``, ``start + 1``, ...; each epoch is a seeded
    permutation, so a resumed run sees the batches it would have seen."""
    per_epoch = math.ceil(n / batch_size)
    epoch, position = divmod(start, per_epoch)
    while True:
        order = torch.randperm(n, generator=torch.Generator().manual_seed(seed + epoch))
        for i in range(position, per_epoch):
            yield order[i * batch_size:(i + 1) * batch_size].tolist()
        epoch, position = epoch + 1, 0


@dataclass
class _Corpus:
    """Token ids of the training and held-out sentences, and how they were chosen."""

    train: list[list[int]]
    heldout: list[list[int]]
    sentences: int
    excluded: int
    words: set[str]  # every word of the kept sentences


def _load_corpus(
    texts: Sequence[str | Path], exclude: Sequence[str | Path], tokenizer: Tokenizer,
    config: LMTrainConfig, log: Callable[[str], None],
) -> _Corpus:
    sentences = read_sentences(texts)
    excluded_texts = manifest_texts(exclude)
    kept, excluded = drop_excluded(sentences, excluded_texts)
    log(f"read {len(sentences)} sentences; removed {excluded} that appear in the "
        f"{len(exclude)} --exclude manifest(s) ({len(excluded_texts)} distinct transcripts)")
    if not exclude:
        log("warning: no --exclude manifests; make sure the text holds no dev/test transcripts")
    if len(kept) < 2:
        raise ValueError(f"{len(kept)} sentences left: need 2 or more (one is held out)")
    train, heldout = split_heldout(kept, config.heldout_fraction, config.max_heldout,
                                   config.seed)
    corpus = _Corpus(tokenizer.sp.encode(train), tokenizer.sp.encode(heldout),
                     len(sentences), excluded, {word for s in kept for word in s.split()})
    log(f"training on {len(corpus.train)} sentences ({sum(map(len, corpus.train))} tokens), "
        f"{len(corpus.heldout)} held out")
    return corpus


def _settings(texts: Sequence[str | Path], exclude: Sequence[str | Path],
              config: LMTrainConfig) -> dict[str, Any]:
    """What a resumed run must keep, by the flag that sets it: its data, held-out split and
    batches, and the optimiser and schedule, which the resume restores."""
    return {"--text": [os.path.abspath(p) for p in texts],
            "--exclude": [os.path.abspath(p) for p in exclude],
            "--seed": config.seed, "--heldout-fraction": config.heldout_fraction,
            "--batch-size": config.batch_size, "--lr": config.peak_lr,
            "--warmup-steps": config.warmup_steps}


def _resume(
    path: Path, lm: WordPieceLM, pieces: list[str], optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler, device: str, settings: dict[str, Any],
    steps: int,
) -> tuple[int, float | None]:
    """Load the training state at ``path`` if there is one, written for the same LM config,
    tokenizer (``pieces``) and ``settings``, and not beyond ``steps`` -> (the step to
    continue from, the held-out perplexity at step 0 if recorded)."""
    if not path.is_file():
        return 0, None
    state = torch.load(path, map_location=device, weights_only=True)
    # the tokenizer first: another one's size also makes another LM config
    if state.get("pieces", pieces) != pieces:  # (states from before it was kept: not checked)
        raise ValueError(f"{path}: a run with another tokenizer; use a new --out")
    if LMConfig.from_dict(state["lm_config"]) != lm.cfg:
        raise ValueError(f"{path}: a run with another LM config; use a new --out")
    for flag, value in settings.items():  # a new held-out split scored trained-on sentences
        recorded = state.get("settings", {}).get(flag, value)  # (not kept before 2026-12-04)
        if recorded != value:
            raise ValueError(f"{flag}: {value}, but the run in {path.parent} started with "
                             f"{recorded}; a resume keeps its settings: give those, or use a "
                             "new --out")
    if state["step"] > steps:  # it wrote the LM of the later step, and said nothing
        raise ValueError(f"--steps: {steps} is below the step {path} has reached "
                         f"({state['step']}); give {state['step']} or more")
    lm.load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    return state["step"], state.get("heldout_perplexity_start")


@contextlib.contextmanager
def _stop_requests() -> Iterator[list[int]]:
    """Inside, Ctrl-C and SIGTERM do not stop the process at once: the signal's number is
    appended to the yielded list, for the training loop to stop at the end of its step.
    (Only in the main thread, where Python delivers signals; elsewhere nothing changes.)"""
    requested: list[int] = []
    if threading.current_thread() is not threading.main_thread():
        yield requested
        return
    previous = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    for sig in previous:
        signal.signal(sig, lambda number, _frame: requested.append(number))
    try:
        yield requested
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def train_lm(
    texts: Sequence[str | Path],
    tokenizer: Tokenizer,
    out_dir: str | Path,
    lm_config: LMConfig,
    config: LMTrainConfig,
    exclude: Sequence[str | Path] = (),
    device: str = "cpu",
    log: Callable[[str], None] = print,
) -> LMTrainReport:
    """Train on the sentences of ``texts`` minus those of the ``exclude`` manifests and
    write the LM folder ``out_dir``."""
    out_dir = Path(out_dir)
    state_path = out_dir / STATE_FILE
    if out_dir.is_dir() and not (  # a file there: claimed names it
            state_path.is_file() or all(p.name == LOCK_FILE for p in out_dir.iterdir())):
        raise ValueError(f"{out_dir}: not an LM run's folder (no {STATE_FILE}) and not empty; "
                         "train-lm writes a new folder or resumes its own")
    with claimed(out_dir, "--out"):
        return _train_lm_in(texts, tokenizer, out_dir, lm_config, config, exclude, device, log)


def _train_lm_in(
    texts: Sequence[str | Path], tokenizer: Tokenizer, out_dir: Path, lm_config: LMConfig,
    config: LMTrainConfig, exclude: Sequence[str | Path], device: str,
    log: Callable[[str], None],
) -> LMTrainReport:
    state_path = out_dir / STATE_FILE
    corpus = _load_corpus(texts, exclude, tokenizer, config, log)
    torch.manual_seed(config.seed)
    lm = WordPieceLM(dataclasses.replace(lm_config, vocab_size=tokenizer.vocab_size)).to(device)
    optimizer = torch.optim.Adam(lm.parameters(), lr=config.peak_lr)
    scheduler = noam_scheduler(optimizer, config.warmup_steps)
    pieces = tokenizer.vocabulary()
    settings = _settings(texts, exclude, config)
    step, start_ppl = _resume(state_path, lm, pieces, optimizer, scheduler, device, settings,
                              config.steps)
    if step:
        log(f"resuming at step {step}")
    ppl = perplexity(lm, corpus.heldout)
    log(f"held-out perplexity {ppl:.2f} at step {step}")
    if start_ppl is None:  # a new run (or a state from before step 0's value was kept)
        start_ppl = ppl

    batches = _batches(len(corpus.train), config.batch_size, config.seed, step)
    running, running_tokens = 0.0, 0
    with _stop_requests() as stop:
        while step < config.steps and not stop:
            lm.train()
            batch = [corpus.train[i] for i in next(batches)]
            tokens = sum(len(s) + 1 for s in batch)
            with torch.autocast(torch.device(device).type, torch.bfloat16,
                                enabled=config.bf16):
                loss = -lm.token_log_probs(batch).sum() / tokens
            optimizer.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(lm.parameters(), config.grad_clip)
            optimizer.step()
            scheduler.step()
            step += 1
            running += loss.item() * tokens
            running_tokens += tokens
            if step % config.log_every == 0 or step == config.steps:
                mean = running / running_tokens
                log(f"step {step}/{config.steps}  loss {mean:.3f}  train ppl {math.exp(mean):.2f}  "
                    f"lr {scheduler.get_last_lr()[0]:.2e}")
                running, running_tokens = 0.0, 0
            if step % config.checkpoint_every == 0 or step == config.steps or stop:
                with replacing(state_path, sync=True) as tmp:
                    save_torch({"lm_config": lm.cfg.to_dict(), "pieces": pieces, "step": step,
                                "model": lm.state_dict(), "optimizer": optimizer.state_dict(),
                                "scheduler": scheduler.state_dict(), "settings": settings,
                                "heldout_perplexity_start": start_ppl}, tmp)

    if stop:  # the state of the last whole step is saved: a re-run goes on from it
        log(f"stopped at step {step}: the same command resumes from {state_path}")
        raise KeyboardInterrupt if stop[0] == signal.SIGINT else SystemExit(128 + stop[0])

    report = LMTrainReport(
        sentences=corpus.sentences, excluded=corpus.excluded,
        train_sentences=len(corpus.train), heldout_sentences=len(corpus.heldout),
        heldout_perplexity_start=start_ppl, heldout_perplexity=perplexity(lm, corpus.heldout),
        steps=step,
    )
    log(f"held-out perplexity {report.heldout_perplexity:.2f} after {step} steps")
    info = {**dataclasses.asdict(report), "text": [str(p) for p in texts],
            "exclude": [str(p) for p in exclude], "train": dataclasses.asdict(config)}
    save_lm_dir(lm.eval(), tokenizer, out_dir, info, words=corpus.words | dictionary_words())
    return report
