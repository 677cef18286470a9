"""LightningModule: loss, Noam-scheduled Adam, dev WER, exact-resume state."""

from __future__ import annotations

import random
import time
from typing import Any

import lightning as L
import numpy as np
import torch

from ..audio.features import LogMelFeatures
from ..data.dataset import Batch
from ..data.manifest import DataIssues
from ..decoding.search import DecodingOptions, decode
from ..models import ASRModel, ModelConfig
from ..scoring import WordErrors, word_errors
from ..text.tokenizer import Tokenizer
from .config import OptimConfig
from .schedule import noam_scheduler


class ASRTask(L.LightningModule):
    """Trains an ASRModel; validation decodes greedily and reports dev WER (%)."""

    def __init__(self, model_cfg: ModelConfig, optim: OptimConfig, tokenizer: Tokenizer) -> None:
        super().__init__()
        self.model = ASRModel(model_cfg)
        self.log_mel = LogMelFeatures(model_cfg.features)  # no weights: not in checkpoints
        self.optim = optim
        self.tokenizer = tokenizer
        self.issues = DataIssues()
        self.position = (0, 0)  # (epoch, batches of it consumed), for an exact resume
        self._val_errors = WordErrors()
        self._val_loss = (0.0, 0)  # (sum of per-utterance losses, utterances)
        self._clock: tuple[float, float] | None = None  # (start time, audio seconds since)
        self._step_utterances = 0  # of this step, summed over the DDP processes
        # {"folder", "info"} of the model folder a fresh run started from (init_from); kept in
        # the checkpoints, so a resumed run still records it if the folder changed since
        self.init_source: dict[str, Any] | None = None

    def configure_optimizers(self) -> dict[str, Any]:
        optimizer = torch.optim.Adam(
            self.model.parameters(), lr=self.optim.peak(self.model.cfg.encoder.d_model),
            betas=self.optim.betas, eps=self.optim.eps, weight_decay=self.optim.weight_decay,
        )
        scheduler = noam_scheduler(optimizer, self.optim.warmup_steps)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler,
                                                         "interval": "step"}}

    def on_train_batch_start(self, batch: Batch, batch_idx: int) -> None:
        epoch, consumed = self.position
        self.position = (batch.epoch, consumed + 1 if batch.epoch == epoch else 1)

    def features(self, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
        """(feats (B, T, F), feat_lengths (B,)) of the batch's waveforms, computed on the
        model's device and in float32 whatever the step's precision (bf16 would round the
        power spectrum before its logarithm)."""
        with torch.autocast(self.device.type, enabled=False):
            return self.log_mel(batch.waves, batch.wave_lengths, batch.warps)

    def training_step(self, batch: Batch, batch_idx: int) -> torch.Tensor | None:
        self._note_issues(batch.issues)
        self._sum_step_data(batch)
        if len(batch) == 0:  # every utterance of it was bad data
            if self.trainer.world_size == 1:
                return None  # nothing to learn from: skip the step
            # Lightning cannot skip a step under DDP (the other processes wait for this
            # one's gradients): this one takes part with zero gradients
            return sum(p.sum() for p in self.model.parameters()) * 0.0
        out = self.model(*self.features(batch), batch.targets, batch.target_lengths,
                         pred_weight_noise=self.optim.weight_noise(self.global_step))
        self.log("train_loss", out.loss, prog_bar=True, batch_size=len(batch))
        for name in ("ctc", "rnnt"):
            part = getattr(out, name)
            if part is not None and self.model.cfg.has_ctc and self.model.cfg.has_transducer:
                self.log(f"train_{name}", part, batch_size=len(batch))
        self.log("lr", self.optimizers().param_groups[0]["lr"], batch_size=len(batch))
        return out.loss

    def _sum_step_data(self, batch: Batch) -> None:
        """Sums the step's utterances and audio seconds over the DDP processes (a collective
        operation that every process joins at every step) and logs the run's throughput:
        audio seconds per second since its first step."""
        now = time.perf_counter()
        sums = torch.tensor([len(batch), batch.seconds], dtype=torch.float64, device=self.device)
        utterances, seconds = self.trainer.strategy.reduce(sums, reduce_op="sum").tolist()
        self._step_utterances = int(utterances)
        start, before = self._clock or (now, 0.0)
        self._clock = (start, before + seconds)
        if now > start:
            self.log("audio_s_per_s", (before + seconds) / (now - start), prog_bar=True,
                     batch_size=max(len(batch), 1))

    def on_before_optimizer_step(self, optimizer: torch.optim.Optimizer) -> None:
        if self._step_utterances == 0:
            # no process had data: without gradients Adam leaves the weights and its
            # moments as they are (zero gradients would still move them), like the step a
            # single process skips
            for p in self.model.parameters():
                p.grad = None

    def validation_step(self, batch: Batch, batch_idx: int) -> None:
        self._note_issues(batch.issues)
        if len(batch) == 0:
            return
        enc, lengths = self.model.encode(*self.features(batch))
        out = self.model.loss(enc, lengths, batch.targets, batch.target_lengths)
        loss_sum, utterances = self._val_loss
        self._val_loss = (loss_sum + float(out.loss) * len(batch), utterances + len(batch))
        for hyp, ref in zip(decode(self.model, enc, lengths, DecodingOptions()), batch.texts,
                            strict=True):
            self._val_errors += word_errors(ref, self.tokenizer.decode(hyp.tokens))

    def on_validation_epoch_end(self) -> None:
        e = self._val_errors
        totals = torch.tensor(
            [e.substitutions + e.deletions + e.insertions, e.words, *self._val_loss],
            dtype=torch.float64, device=self.device,
        )
        errors, words, loss_sum, utterances = (
            self.trainer.strategy.reduce(totals, reduce_op="sum").tolist()
        )
        if words > 0:
            self.log("val_wer", 100.0 * errors / words, prog_bar=True)
        if utterances > 0:
            self.log("val_loss", loss_sum / utterances)
        self._val_errors = WordErrors()
        self._val_loss = (0.0, 0)

    def _note_issues(self, issues: DataIssues) -> None:
        if issues.total:
            self.issues.merge(issues)
            self.print(f"skipped bad data: {issues.summary()}")

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Runs on every rank; only the first writes the checkpoint, so the random number
        generators' states of all ranks are gathered into it: each rank's dropout and
        SpecAugment draws differ, and its own must come back for an exact resume."""
        checkpoint["resume"] = {
            "position": self.position,
            "init_source": self.init_source,
            "rng_by_rank": _gathered(_rng_state()),
        }

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        state = checkpoint.get("resume")
        if not state:
            return
        # before "position": the batches of Lightning's epoch (its count may be one ahead)
        self.position = tuple(state.get("position")
                              or (checkpoint["epoch"], state["batches_this_epoch"]))
        self.init_source = state.get("init_source")
        datamodule = self.trainer.datamodule if self._trainer is not None else None
        if datamodule is not None:
            datamodule.position = self.position
        by_rank = state.get("rng_by_rank") or [state["rng"]]  # "rng": one process's, before
        # a run resumed on more processes than it was saved from: the others start from
        # the first rank's state (the data is sharded differently anyway)
        rng = by_rank[self.global_rank] if self.global_rank < len(by_rank) else by_rank[0]
        torch.set_rng_state(rng["torch"])
        if rng["cuda"] and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(rng["cuda"])
        np.random.set_state(_numpy_state_from_torch(rng["numpy"]))
        random.setstate(rng["python"])


def _rng_state() -> dict[str, Any]:
    """This process's random number generators: torch's (CPU and CUDA), NumPy's, Python's."""
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "numpy": _numpy_state_to_torch(np.random.get_state()),
        "python": random.getstate(),
    }


def _gathered(value: Any) -> list[Any]:
    """[value of rank 0, value of rank 1, ...] on every rank; [value] without DDP."""
    if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
        return [value]
    values: list[Any] = [None] * torch.distributed.get_world_size()
    torch.distributed.all_gather_object(values, value)
    return values


def _numpy_state_to_torch(state: tuple) -> tuple:
    """NumPy's RNG state with its key array as a tensor, so that checkpoints load with
    ``torch.load(weights_only=True)``."""
    name, keys, pos, has_gauss, cached = state
    return name, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, cached


def _numpy_state_from_torch(state: tuple) -> tuple:
    name, keys, pos, has_gauss, cached = state
    return name, keys.numpy().astype(np.uint32), pos, has_gauss, cached
