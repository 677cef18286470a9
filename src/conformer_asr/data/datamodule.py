"""LightningDataModule: manifests -> bucketed, DDP-aware DataLoaders of Batches."""

from __future__ import annotations

import random
import warnings
from functools import partial
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lhotse import CutSet
from lhotse.dataset import DynamicBucketingSampler, SimpleCutSampler
from lhotse.dataset.sampling.base import CutSampler
from lhotse.dataset.sampling.dynamic_bucketing import estimate_duration_buckets

from ..models.config import ModelConfig
from ..text.tokenizer import Tokenizer
from .augment import Augmenter
from .dataset import Batch, EpochSampler, SpeechDataset, worker_init
from .manifest import DataIssues, load_cuts
from .manifest_errors import ManifestError


def _identity(batch: Batch) -> Batch:
    return batch


class SpeechDataModule(L.LightningDataModule):
    """Training batches are bucketed by duration up to ``max_duration`` seconds of audio;
    Lhotse's samplers read the DDP rank and world size, so each GPU gets its own shard."""

    def __init__(
        self,
        train: CutSet,
        dev: CutSet | None,
        tokenizer: Tokenizer,
        model: ModelConfig,
        augmenter: Augmenter | None,
        max_duration: float,
        num_buckets: int,
        num_workers: int,
        seed: int,
    ) -> None:
        super().__init__()
        self.train_cuts = train
        self.dev_cuts = dev
        self.tokenizer = tokenizer
        self.model_cfg = model
        self.augmenter = augmenter
        self.max_duration = max_duration
        self.num_buckets = num_buckets
        self.num_workers = num_workers
        self.seed = seed
        # (epoch, batches of it consumed) where training goes on: set by a resume
        self.position = (0, 0)

    def _loader(self, dataset: SpeechDataset, sampler: EpochSampler) -> torch.utils.data.DataLoader:
        return torch.utils.data.DataLoader(
            dataset, sampler=sampler, batch_size=None, collate_fn=_identity,
            num_workers=self.num_workers, worker_init_fn=worker_init,
            # started once, not at every epoch: each start forks this process, threads and
            # all (DDP's among them); the workers keep no state between batches (every
            # utterance's augmentation draws from its own generator), so results are the same
            persistent_workers=self.num_workers > 0,
            # own generator: creating an iterator must not draw from the global RNG, or a
            # resumed run's dropout and SpecAugment would drift from the uninterrupted one
            generator=torch.Generator().manual_seed(self.seed),
        )

    def train_dataloader(self) -> torch.utils.data.DataLoader:
        processes = self.trainer.world_size if self.trainer is not None else 1
        distributed = processes > 1
        # Every bucket needs a batch for each process: with several, each bucket's last
        # partial batch is dropped, and a small set in many buckets made no batch at all.
        seconds = sum(c.duration for c in self.train_cuts)
        buckets = min(self.num_buckets, len(self.train_cuts) // 10,
                      int(seconds // (self.max_duration * processes)))
        common = {"max_duration": self.max_duration, "shuffle": True, "seed": self.seed,
                  "drop_last": distributed}  # drop_last: equal batch counts on every rank
        bins = estimate_duration_buckets(self.train_cuts, buckets) if buckets >= 2 else None
        sampler = EpochSampler(partial(self._train_sampler, bins=bins, common=common),
                               *self.position)
        dataset = SpeechDataset(self.tokenizer, self.model_cfg, self.augmenter, self.seed)
        return self._loader(dataset, sampler)

    def _train_sampler(self, epoch: int, bins: list[float] | None,
                       common: dict[str, Any]) -> CutSampler:
        """The training sampler of ``epoch``. Without duration ``bins`` (tiny sets), one that
        shuffles the whole set each epoch itself. With them, a bucketing one over the cuts
        shuffled for the epoch (seed + epoch): Lhotse's takes cuts in the order given,
        shuffling only within a window of ``buffer_size`` of them, so a manifest sorted by
        speaker (LibriSpeech's), or a second manifest after a first, would come speaker by
        speaker, or manifest by manifest, in the same order every epoch."""
        if bins is None:
            return SimpleCutSampler(self.train_cuts, **common)
        shuffled = self.train_cuts.shuffle(random.Random(self.seed + epoch))
        with warnings.catch_warnings():
            # The manifests are read eagerly on purpose (checked and filtered up front, see
            # load_manifests); Lhotse's warning about the memory this costs does not apply.
            warnings.filterwarnings("ignore", "You are using DynamicBucketingSampler")
            return DynamicBucketingSampler(shuffled, duration_bins=bins, **common)

    def val_dataloader(self) -> torch.utils.data.DataLoader:
        if self.dev_cuts is None:
            return []  # type: ignore[return-value]
        sampler = EpochSampler(lambda _: SimpleCutSampler(
            self.dev_cuts, max_duration=self.max_duration, shuffle=False, drop_last=False,
        ))
        return self._loader(SpeechDataset(self.tokenizer, self.model_cfg), sampler)


def load_manifests(paths: tuple[str, ...] | list[str], issues: DataIssues,
                   max_seconds: float | None = None) -> CutSet:
    """Concatenate manifests; drop (and count) utterances longer than ``max_seconds``, and
    ids that an earlier manifest gave (a manifest listed twice doubled the data).

    Raises ManifestError when every utterance of a manifest has an id that another, earlier
    manifest gave: such a manifest would add nothing, which is never what was meant.
    """
    kept, seen = [], set()
    for index, path in enumerate(paths):
        cuts = load_cuts(path, issues)
        repeated = 0
        for cut in cuts:
            if cut.id in seen:
                issues.add("duplicate id", cut.id)
                repeated += 1
            elif max_seconds is not None and cut.duration > max_seconds:
                issues.add(f"longer than {max_seconds:g} s", cut.id)
            else:
                kept.append(cut)
            seen.add(cut.id)
        listed_before = any(Path(path).resolve() == Path(p).resolve() for p in paths[:index])
        if repeated and repeated == len(cuts) and not listed_before:
            raise ManifestError(f"{path}: all {repeated} utterance ids are already in an "
                                f"earlier manifest (e.g. {next(iter(cuts)).id}); give its "
                                "utterances ids of their own")
    return CutSet.from_cuts(kept)
