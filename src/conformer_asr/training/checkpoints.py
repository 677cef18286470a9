"""Crash-safe checkpoint writing and checkpoint averaging."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.plugins.io import TorchCheckpointIO


class AtomicCheckpointIO(TorchCheckpointIO):
    """Writes to a temporary file, fsyncs, then renames: a checkpoint file on disk is
    always complete, even if the process is killed mid-write."""

    def save_checkpoint(
        self, checkpoint: dict[str, Any], path: str | os.PathLike, storage_options: Any = None
    ) -> None:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        save_atomic(checkpoint, path)


class KeepLastCheckpoints(ModelCheckpoint):
    """Writes ``step-N.ckpt`` every ``every_steps`` steps and ``last.ckpt``; keeps ``keep`` of them.

    Which step files exist is read from the folder when training starts, not taken from
    the callback state in the resumed checkpoint: Lightning's top-k bookkeeping stops
    deleting once it tracks more than k files (a run resumed with a smaller ``keep``), and
    it restores no state at all when ``every_steps`` or ``keep`` changed. ``last.ckpt``
    keeps its name: Lightning would otherwise write ``last-v1.ckpt`` beside a stale
    ``last.ckpt`` whenever its state was not restored, and the next resume went back.
    """

    def __init__(self, dirpath: Path, every_steps: int, keep: int) -> None:
        super().__init__(
            dirpath=dirpath, filename="step-{step}", every_n_train_steps=every_steps,
            save_top_k=keep, monitor="step", mode="max", save_last=True,
            auto_insert_metric_name=False, enable_version_counter=False,
        )

    @property
    def state_key(self) -> str:
        return "KeepLastCheckpoints"

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        on_disk = step_checkpoints(Path(self.dirpath or "."))
        for path in on_disk[:-self.save_top_k]:
            self._remove_checkpoint(trainer, str(path))
        kept = on_disk[-self.save_top_k:]
        self.best_k_models = {str(p): torch.tensor(checkpoint_step(p)) for p in kept}
        if kept:
            self.kth_best_model_path, self.best_model_path = str(kept[0]), str(kept[-1])
            self.kth_value = self.best_k_models[self.kth_best_model_path]
            self.best_model_score = self.best_k_models[self.best_model_path]


def checkpoint_step(path: Path) -> int:
    """The training step in a ``step-N.ckpt`` file name."""
    return int(path.stem.split("-")[1])


def step_checkpoints(folder: Path) -> list[Path]:
    """The ``step-N.ckpt`` files in ``folder``, oldest first."""
    return sorted(folder.glob("step-*.ckpt"), key=checkpoint_step)


def save_atomic(state: dict[str, Any], path: Path) -> None:
    """torch.save to a temporary file, fsync, rename: the file is always complete."""
    tmp = path.with_name(f".{path.name}.tmp")
    with tmp.open("wb") as f:
        torch.save(state, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def average_checkpoints(paths: list[Path], prefix: str = "model.") -> dict[str, torch.Tensor]:
    """Element-wise mean of the model weights in Lightning checkpoints.

    Keys under ``prefix`` (the LightningModule attribute holding the ASRModel)
    are averaged; integer buffers (BatchNorm's batch counters) come from the last.
    """
    if not paths:
        raise ValueError("average_checkpoints: no checkpoints given")
    total: dict[str, torch.Tensor] = {}
    for path in paths:
        state = torch.load(path, map_location="cpu", weights_only=False)["state_dict"]
        for key, value in state.items():
            if not key.startswith(prefix):
                continue
            name = key[len(prefix):]
            if value.is_floating_point():
                total[name] = total.get(name, 0) + value.double()
            else:
                total[name] = value
    return {k: (v / len(paths)).float() if v.is_floating_point() else v for k, v in total.items()}
