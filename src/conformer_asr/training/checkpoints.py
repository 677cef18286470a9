"""Crash-safe checkpoint writing, checkpoint averaging, and a checkpoint read as a model."""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.plugins.io import TorchCheckpointIO

from ..files import flush_to_disk, naming, save_torch, temporary_beside
from ..inference.average import mean_weights
from ..inference.model_dir import FolderConfig, ModelDirError
from ..models.asr import ASRModel
from ..models.config import ConfigError
from ..text.tokenizer import Tokenizer
from .config import recorded_model, run_config, run_tokenizer


class AtomicCheckpointIO(TorchCheckpointIO):
    """Writes each checkpoint to a hidden temporary file and fsyncs it; ``publish()`` renames
    the written files into place. A checkpoint file on disk is therefore always complete.

    Publishing is a separate step because Lightning saves a step's checkpoint before it
    logs that step's metrics: published at once, a kill in between resumed after a
    step whose row never reached metrics.csv. ``KeepLastCheckpoints`` publishes once the
    row is written; ``teardown`` publishes whatever is left when training ends or fails.
    """

    def __init__(self) -> None:
        super().__init__()
        self._written: dict[Path, Path] = {}  # final path -> its complete temporary file

    def save_checkpoint(
        self, checkpoint: dict[str, Any], path: str | os.PathLike, storage_options: Any = None
    ) -> None:
        path = Path(path)
        tmp = temporary_beside(path)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            save_torch(checkpoint, tmp)
            flush_to_disk(tmp)
        except OSError as error:  # named by the checkpoint, and no half file left to fill
            tmp.unlink(missing_ok=True)  # the disk
            raise naming(error, path) from None
        replaced = self._written.get(path)  # saved again before it was published
        self._written[path] = tmp
        if replaced is not None:
            replaced.unlink(missing_ok=True)

    def publish(self) -> None:
        for path, tmp in self._written.items():
            os.replace(tmp, path)
        self._written.clear()

    def remove_checkpoint(self, path: str | os.PathLike) -> None:
        tmp = self._written.pop(Path(path), None)
        if tmp is not None:
            tmp.unlink()
        super().remove_checkpoint(path)

    def teardown(self) -> None:
        self.publish()


class KeepLastCheckpoints(ModelCheckpoint):
    """Writes ``step-N.ckpt`` every ``every_steps`` steps and at the last step, and
    ``last.ckpt``; keeps the newest ``keep`` step files.

    Which step files to keep is read from the folder, by step, not left to Lightning's
    top-k bookkeeping: that stops deleting once it tracks more than k files (a run resumed
    with a smaller ``keep``), restores nothing when ``every_steps`` or ``keep`` changed, and,
    given a metric to rank by, puts off a save due at the last batch of an epoch until the
    next validation, which may come steps later (step 5's checkpoint became step 7's).
    ``last.ckpt`` keeps its name: Lightning would otherwise write ``last-v1.ckpt`` beside a
    stale ``last.ckpt`` whenever its state was not restored, and the next resume went back.
    Through ``AtomicCheckpointIO``, a step's files appear under their names at the next
    batch or at the end of the step's validation, once the step's metrics are logged.
    """

    def __init__(self, dirpath: Path, every_steps: int, keep: int) -> None:
        super().__init__(
            dirpath=dirpath, filename="step-{step}", every_n_train_steps=every_steps,
            save_top_k=-1, save_last=True, auto_insert_metric_name=False,
            enable_version_counter=False,
        )
        self.keep = keep
        self._pruned_after = 0  # the step whose save old files were last removed after

    @property
    def state_key(self) -> str:
        return "KeepLastCheckpoints"

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        super().on_train_start(trainer, pl_module)
        self._remove_old(trainer)

    # Lightning logs a step's metrics after its on_train_batch_end, where this callback
    # saves, and then validates if the step is due for it. By the next batch, or by the
    # end of that validation, the step's rows are in metrics.csv: a resumed run does not
    # repeat the validation of the step it resumes from, so its row must be written first.
    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule,
                             batch: Any, batch_idx: int) -> None:
        self._publish(trainer)

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        super().on_validation_end(trainer, pl_module)
        self._publish(trainer)

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self._last_global_step_saved != trainer.global_step:  # every_steps skipped it
            candidates = self._monitor_candidates(trainer)
            self._save_topk_checkpoint(trainer, candidates)
            self._save_last_checkpoint(trainer, candidates)
        self._publish(trainer)

    def _publish(self, trainer: L.Trainer) -> None:
        io = trainer.strategy.checkpoint_io
        if isinstance(io, AtomicCheckpointIO):
            io.publish()
        # not at every batch, only after a save: nothing else adds a step file
        if self._last_global_step_saved != self._pruned_after:
            self._pruned_after = self._last_global_step_saved
            self._remove_old(trainer)

    def _remove_old(self, trainer: L.Trainer) -> None:
        for path in step_checkpoints(Path(self.dirpath or "."))[:-self.keep]:
            trainer.strategy.remove_checkpoint(path)  # the first DDP process's part


def checkpoint_step(path: Path) -> int:
    """The training step in a ``step-N.ckpt`` file name."""
    return int(path.stem.split("-")[1])


def step_checkpoints(folder: Path) -> list[Path]:
    """The ``step-N.ckpt`` files in ``folder``, oldest first."""
    return sorted(folder.glob("step-*.ckpt"), key=checkpoint_step)


def average_checkpoints(paths: list[Path], prefix: str = "model.") -> dict[str, torch.Tensor]:
    """Element-wise mean of the model weights in Lightning checkpoints (``mean_weights``):
    the keys under ``prefix``, the LightningModule attribute holding the ASRModel."""
    if not paths:
        raise ValueError("average_checkpoints: no checkpoints given")

    def model_weights(path: Path) -> dict[str, torch.Tensor]:
        state = torch.load(path, map_location="cpu", weights_only=False)["state_dict"]
        return {key[len(prefix):]: value for key, value in state.items()
                if key.startswith(prefix)}

    return mean_weights(model_weights(path) for path in paths)


def read_checkpoint(path: Path) -> tuple[ASRModel, Tokenizer, FolderConfig]:
    """A training checkpoint (``RUN/checkpoints/*.ckpt``) as ``load_model_dir`` reads a model
    folder: the model at that step in eval mode on the CPU (not averaged), the run's
    tokenizer, and its architecture from ``RUN/config.yaml`` (info: the checkpoint and its
    step). Raises ModelDirError naming what is missing or unreadable."""
    config, tokenizer = _checkpoint_config(path)
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=False)
        state = checkpoint["state_dict"]
    except Exception as error:  # torch.load raises many kinds for a file that is no checkpoint
        raise ModelDirError(f"{path}: not a readable training checkpoint ({error})") from None
    model = ASRModel(config.model)
    weights = {k[len("model."):]: v for k, v in state.items() if k.startswith("model.")}
    try:
        model.load_state_dict(weights)
    except RuntimeError as error:
        first = str(error).strip().splitlines()[0]
        raise ModelDirError(f"{path}: weights do not match {run_config(path.parent.parent)} "
                            f"({first})") from None
    info = {"checkpoint": str(path), "steps": checkpoint.get("global_step")}
    return model.eval(), tokenizer, dataclasses.replace(config, info=info)


def read_checkpoint_config(path: Path) -> FolderConfig:
    """The architecture of a training checkpoint's run (``RUN/config.yaml``) as a model
    folder's config, without loading the weights."""
    config, _ = _checkpoint_config(path)
    return dataclasses.replace(config, info={"checkpoint": str(path)})


def _checkpoint_config(path: Path) -> tuple[FolderConfig, Tokenizer]:
    run = path.parent.parent
    settings = run_config(run)
    if not settings.is_file():
        raise ModelDirError(f"{path}: a checkpoint without its run's {settings}, which gives "
                            "the model's architecture (checkpoints are read in their run's "
                            "checkpoints/ folder)")
    try:
        recorded, model = recorded_model(run)
        given = ((recorded.get("data") or {}).get("tokenizer") or {}).get("path")
    except AttributeError as error:  # a data or tokenizer section that is not a mapping
        raise ModelDirError(f"{settings}: not a run's recorded settings ({error})") from None
    except ConfigError as error:
        raise ModelDirError(str(error)) from None
    tokenizer_file = Path(given) if given and Path(given).is_file() else run_tokenizer(run)
    if not tokenizer_file.is_file():
        raise ModelDirError(f"{path}: the run's tokenizer ({tokenizer_file}) is missing")
    tokenizer = Tokenizer(tokenizer_file)
    if tokenizer.vocab_size != model.vocab_size:
        raise ModelDirError(f"{path}: the tokenizer {tokenizer_file} has {tokenizer.vocab_size} "
                            f"pieces, {settings} says {model.vocab_size}")
    return FolderConfig(model, {}, None), tokenizer
