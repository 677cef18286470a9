"""Crash-safe checkpoint writing and checkpoint averaging."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
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
