"""Batches for training and validation: cuts in, padded waveforms and targets out.

A Lhotse sampler picks the cuts of each batch (dynamic bucketing by duration,
split across DDP ranks); this dataset loads their audio, augments it and tokenises
the text, inside DataLoader workers. Log-mel features are computed from the batch's
waveforms where the model is (``ASRTask.features``): on a GPU they take milliseconds,
while in the workers they were more than half of the loader's time, which bounded
a GPU run's throughput. Unusable utterances are counted in the batch's ``issues`` and
skipped.

Augmentation randomness is a pure function of (seed, epoch, cut id), so a batch
is the same whichever worker makes it and after a resume.
"""

from __future__ import annotations

import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np
import torch
from lhotse import CutSet
from lhotse.dataset.sampling.base import CutSampler

from ..audio.io import SAMPLE_RATE
from ..models.config import ConfigError, ModelConfig
from ..text.tokenizer import UNK_ID, Tokenizer
from .augment import Augmenter
from .manifest import DataIssues


@dataclass
class Batch:
    """waves (B, N) float in [-1, 1], zero-padded; wave_lengths (B,) samples; warps (B,)
    each utterance's VTLP factor, or None where VTLP is off; targets (B, U),
    target_lengths (B,); plus metadata."""

    waves: torch.Tensor
    wave_lengths: torch.Tensor
    warps: torch.Tensor | None
    targets: torch.Tensor
    target_lengths: torch.Tensor
    ids: list[str]
    texts: list[str]
    speakers: list[str]
    seconds: float
    issues: DataIssues
    epoch: int = 0  # the pass over the training data it comes from

    def __len__(self) -> int:
        return len(self.ids)


def utterance_rng(seed: int, epoch: int, cut_id: str) -> np.random.Generator:
    return np.random.default_rng([seed, epoch, zlib.crc32(cut_id.encode())])


class EpochSampler:
    """Lhotse samplers, one for each epoch: each pass over this yields (epoch, cuts) for the
    next epoch, from ``sampler_for(epoch)``.

    It counts epochs itself, from ``epoch``, and has no ``set_epoch`` for Lightning to call:
    Lightning's count skips one when a run resumes from a checkpoint taken at an epoch's
    last batch, which changed the shuffle and augmentation of every epoch after it.
    The first pass skips its first ``skip`` batches, replaying the sampler's deterministic
    order (seeded by seed + epoch) without loading audio, so a resumed run sees exactly
    the batches that the interrupted one had not consumed yet.
    """

    def __init__(self, sampler_for: Callable[[int], CutSampler], epoch: int = 0,
                 skip: int = 0) -> None:
        self.sampler_for = sampler_for
        self.epoch, self.skip = epoch, skip

    def __iter__(self) -> Iterator[tuple[int, CutSet]]:
        epoch, skip = self.epoch, self.skip
        self.epoch, self.skip = epoch + 1, 0
        sampler = self.sampler_for(epoch)
        sampler.set_epoch(epoch)
        batches = 0
        for batches, cuts in enumerate(sampler, start=1):
            if batches > skip:
                yield epoch, cuts
        if batches == 0:
            ranks = sampler.world_size or 1
            share = f" for process {sampler.rank} of {ranks}" if ranks > 1 else ""
            raise ConfigError(
                f"data: the sampler made no batch{share}: is data.max_duration shorter than "
                "every utterance, or the manifest too small?"
            )


class SpeechDataset(torch.utils.data.Dataset):
    """__getitem__((epoch, cuts)) -> Batch."""

    def __init__(
        self,
        tokenizer: Tokenizer,
        model: ModelConfig,
        augmenter: Augmenter | None = None,
        seed: int = 0,
    ) -> None:
        self.tokenizer = tokenizer
        self.min_samples = model.min_samples
        self.augmenter = augmenter
        self.seed = seed

    def __getitem__(self, item: tuple[int, CutSet]) -> Batch:
        epoch, cuts = item
        issues = DataIssues()
        waves, warps, tokens, kept = [], [], [], []
        for cut in cuts:
            try:
                samples = cut.load_audio()
            except Exception as error:  # any decoder failure: count, skip, go on
                issues.add("unreadable audio", f"{cut.id} ({str(error).splitlines()[0][:80]})")
                continue
            samples = np.asarray(samples, dtype=np.float32).mean(axis=0)
            if not np.isfinite(samples).all():  # float files can hold them; they poison a step
                issues.add("NaN or infinite samples", cut.id)
                continue
            if cut.sampling_rate != SAMPLE_RATE:
                issues.add("wrong sample rate", f"{cut.id} ({cut.sampling_rate} Hz)")
                continue
            warp = 1.0
            if self.augmenter is not None:
                rng = utterance_rng(self.seed, epoch, cut.id)
                samples = self.augmenter(samples, rng)
                warp = self.augmenter.warp_factor(rng)
            if len(samples) < self.min_samples or not np.any(samples):
                issues.add("empty or too short audio", cut.id)
                continue
            text = cut.supervisions[0].text if cut.supervisions else ""
            ids = self.tokenizer.encode(text or "")
            if not ids or UNK_ID in ids:
                issues.add("text the tokenizer cannot encode", f"{cut.id} ({text!r:.60})")
                continue
            waves.append(torch.from_numpy(samples))
            warps.append(warp)
            tokens.append(torch.tensor(ids))
            kept.append(cut)
        return self._collate(waves, warps, tokens, kept, issues, epoch)

    def _collate(self, waves: list[torch.Tensor], warps: list[float],
                 tokens: list[torch.Tensor], cuts: list, issues: DataIssues,
                 epoch: int) -> Batch:
        if not cuts:
            empty = torch.zeros(0, dtype=torch.long)
            return Batch(torch.zeros(0, self.min_samples), empty, None, empty[:, None],
                         empty, [], [], [], 0.0, issues, epoch)
        lengths = torch.tensor([len(w) for w in waves])
        return Batch(
            waves=torch.nn.utils.rnn.pad_sequence(waves, batch_first=True),
            wave_lengths=lengths,
            warps=None if set(warps) == {1.0} else torch.tensor(warps),
            targets=torch.nn.utils.rnn.pad_sequence(tokens, batch_first=True),
            target_lengths=torch.tensor([len(t) for t in tokens]),
            ids=[c.id for c in cuts],
            texts=[c.supervisions[0].text for c in cuts],
            speakers=[c.supervisions[0].speaker or "" for c in cuts],
            seconds=float(lengths.sum()) / SAMPLE_RATE,
            issues=issues,
            epoch=epoch,
        )


def worker_init(_: int) -> None:
    """One intra-op thread per worker: the workers already run in parallel."""
    torch.set_num_threads(1)

