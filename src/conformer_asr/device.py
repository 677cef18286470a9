"""Which torch device a user asked for, checked against what this machine has."""

from __future__ import annotations

import torch


def check_device(text: str) -> torch.device:
    """"cpu", "cuda" or "cuda:N" -> the device; ValueError unless this machine has it."""
    try:
        device = torch.device(text)
    except RuntimeError:
        device = None
    if device is None or device.type not in ("cpu", "cuda"):
        raise ValueError(f"device {text!r}: give cpu, cuda or cuda:N")
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"device {text!r}: torch sees no CUDA GPU here")
        if (device.index or 0) >= torch.cuda.device_count():
            raise ValueError(f"device {text!r}: torch sees {torch.cuda.device_count()} CUDA "
                             "GPU(s) here")
    return device
